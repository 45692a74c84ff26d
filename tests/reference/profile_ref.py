"""profile_ref.py - what a profiled feature must say, computed with numpy from the codes.

Shared by the saectl tests (test_profile.py) and the daemon's (tests/integration/
test_features.py): both read the same feature objects and calibration tables.
"""
from __future__ import annotations

import numpy as np
import pytest

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]
NAMES = ["q10", "q20", "q30", "q40", "q50", "q60", "q70", "q80", "q90", "q99"]


def check_feature_stats(got: dict, nz: np.ndarray, n_tokens: int, f: int) -> None:
    """Count, density, min/max, mean, numpy's linear quantiles and the bucket counts of one
    feature object against nz, the feature's non-zero values over n_tokens positions."""
    assert got["count"] == len(nz), f
    if len(nz) == 0:
        assert got["max"] is None and got["quantiles"]["q50"] is None
        return
    assert got["density"] == pytest.approx(len(nz) / n_tokens, rel=1e-12)
    assert np.float32(got["max"]) == nz.max() and np.float32(got["min"]) == nz.min()
    assert got["mean"] == pytest.approx(nz.astype(np.float64).mean(), rel=1e-9)
    for name, p in zip(NAMES, LEVELS):
        want = np.quantile(nz.astype(np.float64), p)
        assert got["quantiles"][name] == pytest.approx(want, rel=1e-6), (f, name)
    bounds = np.float32([got["quantiles"][n] for n in ("q20", "q40", "q60", "q80")])
    want = np.bincount(np.searchsorted(bounds, nz, "right"), minlength=5)
    assert [b["count"] for b in got["buckets"]] == want.tolist(), f


def calibration_numpy(pairs):
    """Per bucket (n, mean, CI low, CI high) and Pearson r over (bucket, score) pairs."""
    b = np.array([p[0] for p in pairs]); s = np.array([p[1] for p in pairs])
    rows = []
    for k in range(5):
        sb = s[b == k]
        half = 1.96 * sb.std(ddof=1) / np.sqrt(len(sb))
        rows.append((len(sb), sb.mean(), sb.mean() - half, sb.mean() + half))
    return rows, np.corrcoef(10 + 20 * b, s)[0, 1]


def check_calibration(got: dict, pairs) -> None:
    rows, r = calibration_numpy(pairs)
    for row, (n, mean, lo, hi) in zip(got["buckets"], rows):
        assert row["n_features"] == n
        assert row["mean"] == pytest.approx(mean, rel=1e-9)
        assert row["ci95"] == pytest.approx([lo, hi], rel=1e-9)
    assert got["pearson_r"] == pytest.approx(r, rel=1e-9)
    assert got["n_pairs"] == len(pairs)
