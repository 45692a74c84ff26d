"""refcheck.py - comparing saectl's output files with the numpy reference.

Tolerances (float32 engine vs float64 reference):
  values               rtol 1e-4, atol 1e-5
  decode               rtol 1e-4, atol 1e-4
  selection            a latent may be in one set and not the other only when its score is
                       within its float32 uncertainty of the k-th / (k+1)-th boundary
                       (sae_ref.Encoded.uncertain); for ptopk that uncertainty is computed on
                       s = z + lambda_mag*|a| in float64, so where z == 1 the ranking by |a|
                       must be exact up to GEMM noise on a.
  thresholds           an entry may be on or off only when its pre-activation is within its
                       float32 uncertainty of the threshold (or of zero).
"""
from __future__ import annotations

import numpy as np

import sae_ref

VAL_RTOL, VAL_ATOL = 1e-4, 1e-5
DEC_RTOL, DEC_ATOL = 1e-4, 1e-4


def _close(a, b, rtol, atol):
    return np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)) <= atol + rtol * np.abs(b)


def _fmt_row(name, arr, r, cols):
    return f"{name}[{r}, {list(cols)}] = {np.asarray(arr)[r, list(cols)].tolist()}"


def check_fixed_k(out: dict, ref: sae_ref.Encoded, ctx: str = "") -> np.ndarray:
    """Sparse top-k output: indices int32 [N, k], values float32 [N, k], best first.
    Returns the engine's codes in dense form."""
    n, m = ref.f.shape
    k = ref.k
    assert set(out) >= {"indices", "values"}, f"{ctx}: tensors {sorted(out)}; want indices, values"
    idx, val = out["indices"], out["values"]
    assert idx.dtype == np.int32, f"{ctx}: indices dtype {idx.dtype}, want int32"
    assert val.dtype == np.float32, f"{ctx}: values dtype {val.dtype}, want float32"
    assert idx.shape == (n, k), f"{ctx}: indices shape {idx.shape}, want {(n, k)}"
    assert val.shape == (n, k), f"{ctx}: values shape {val.shape}, want {(n, k)}"
    assert np.all((idx >= 0) & (idx < m)), f"{ctx}: index out of [0, {m})"
    for r in range(n):
        assert len(set(idx[r].tolist())) == k, f"{ctx}: row {r} repeats an index: {idx[r].tolist()}"
    unc = ref.uncertain()
    rows = np.arange(n)
    for r in range(n):
        e, s = set(idx[r].tolist()), set(ref.sel[r].tolist())
        bad = [i for i in sorted(e ^ s) if not unc[r, i]]
        if bad:
            raise AssertionError(
                f"{ctx}: row {r}: selection differs from the reference beyond near-ties.\n"
                f"  engine    {idx[r].tolist()}\n  reference {ref.sel[r].tolist()}\n"
                f"  latents not explained by a near-tie: {bad}\n"
                f"  {_fmt_row('score', ref.score, r, sorted(e ^ s))}\n"
                f"  {_fmt_row('tol', ref.tol, r, sorted(e ^ s))}\n"
                f"  k-th reference score {ref.score[r, ref.sel[r, -1]]!r}")
    # order within a row: by selection score, best first (up to near-ties)
    sc = ref.score[rows[:, None], idx]
    tl = ref.tol[rows[:, None], idx]
    if k > 1:
        viol = sc[:, 1:] > sc[:, :-1] + tl[:, 1:] + tl[:, :-1]
        if viol.any():
            r, j = np.argwhere(viol)[0]
            raise AssertionError(
                f"{ctx}: row {r}: not ordered by selection score, best first: position {j} "
                f"latent {idx[r, j]} score {sc[r, j]!r} < position {j + 1} latent "
                f"{idx[r, j + 1]} score {sc[r, j + 1]!r}\n  engine {idx[r].tolist()}")
    want = ref.value[rows[:, None], idx]
    okv = _close(val, want, VAL_RTOL, VAL_ATOL)
    if not okv.all():
        r, j = np.argwhere(~okv)[0]
        raise AssertionError(
            f"{ctx}: row {r} latent {idx[r, j]}: value {val[r, j]!r}, reference "
            f"{want[r, j]!r} ({int((~okv).sum())} values off)")
    return sae_ref.dense_from_fixed(idx, val.astype(np.float64), m)


def check_dense(codes: np.ndarray, ref: sae_ref.Encoded, ctx: str = "") -> None:
    """Dense codes [N, M] float32 against the reference, near-ties excepted (an uncertain
    entry must be either 0 or the value it takes when selected)."""
    n, m = ref.f.shape
    assert codes.dtype == np.float32, f"{ctx}: codes dtype {codes.dtype}, want float32"
    assert codes.shape == (n, m), f"{ctx}: codes shape {codes.shape}, want {(n, m)}"
    assert np.all(np.isfinite(codes)), f"{ctx}: non-finite codes"
    unc = ref.uncertain()
    good = _close(codes, ref.f, VAL_RTOL, VAL_ATOL)
    alt = _close(codes, 0.0, 0, VAL_ATOL) | _close(codes, ref.value, VAL_RTOL, VAL_ATOL)
    ok = np.where(unc, good | alt, good)
    if not ok.all():
        bad = np.argwhere(~ok)
        r, i = bad[0]
        extra = ""
        if ref.kind == "threshold":
            extra = f" pre-activation {ref.score[r, i]!r} cut {ref.cut[r, i]!r}"
        else:
            extra = f" score {ref.score[r, i]!r} (k-th {ref.score[r, ref.sel[r, -1]]!r})"
        raise AssertionError(
            f"{ctx}: {len(bad)} dense codes differ; first at row {r} latent {i}: engine "
            f"{codes[r, i]!r}, reference {ref.f[r, i]!r};{extra}")
    if ref.kind == "topk":
        nnz = (codes != 0).sum(axis=1)
        assert np.all(nnz <= ref.k), f"{ctx}: a row has {nnz.max()} non-zeros > k={ref.k}"


def check_csr(out: dict, ref: sae_ref.Encoded, ctx: str = "") -> np.ndarray:
    """CSR output (non-top-k architectures): indptr int64 [N+1], indices int32 [nnz],
    values float32 [nnz]; index order within a row; non-zeros only. Returns dense codes."""
    n, m = ref.f.shape
    assert set(out) >= {"indptr", "indices", "values"}, \
        f"{ctx}: tensors {sorted(out)}; want indptr, indices, values (CSR)"
    ip, idx, val = out["indptr"], out["indices"], out["values"]
    assert ip.dtype == np.int64, f"{ctx}: indptr dtype {ip.dtype}, want int64"
    assert idx.dtype == np.int32, f"{ctx}: indices dtype {idx.dtype}, want int32"
    assert val.dtype == np.float32, f"{ctx}: values dtype {val.dtype}, want float32"
    assert ip.shape == (n + 1,), f"{ctx}: indptr shape {ip.shape}, want {(n + 1,)}"
    assert ip[0] == 0 and np.all(np.diff(ip) >= 0), f"{ctx}: indptr not monotone from 0"
    nnz = int(ip[-1])
    assert idx.shape == (nnz,) and val.shape == (nnz,), \
        f"{ctx}: indices {idx.shape} / values {val.shape}, want ({nnz},)"
    assert np.all((idx >= 0) & (idx < m)), f"{ctx}: index out of [0, {m})"
    for r in range(n):
        seg = idx[ip[r]:ip[r + 1]]
        assert np.all(np.diff(seg) > 0), f"{ctx}: row {r} indices not increasing: {seg.tolist()}"
    assert np.all(val != 0), f"{ctx}: CSR holds explicit zeros ({int((val == 0).sum())})"
    dense = sae_ref.dense_from_csr(ip, idx, val.astype(np.float64), n, m)
    check_dense(dense.astype(np.float32), ref, ctx + " (CSR)")
    return dense


def check_decode(xhat: np.ndarray, codes_dense: np.ndarray, ref: sae_ref.Encoded,
                 weights: dict, ctx: str = "") -> None:
    """XHAT.npy against the reference decode of the codes in the file that was decoded;
    and, in rows with no near-tie, against the reference decode of the reference codes."""
    n = codes_dense.shape[0]
    d = np.asarray(weights["W_dec"]).shape[1]
    assert xhat.shape == (n, d), f"{ctx}: xhat shape {xhat.shape}, want {(n, d)}"
    assert xhat.dtype == np.float32, f"{ctx}: xhat dtype {xhat.dtype}, want float32"
    want = sae_ref.decode(codes_dense, weights)
    ok = _close(xhat, want, DEC_RTOL, DEC_ATOL)
    if not ok.all():
        r, j = np.argwhere(~ok)[0]
        raise AssertionError(f"{ctx}: decode differs at row {r} col {j}: engine {xhat[r, j]!r}, "
                             f"reference {want[r, j]!r} ({int((~ok).sum())} entries off)")
    if ref is not None:
        clean = ~ref.uncertain().any(axis=1)
        want2 = sae_ref.decode(ref.f, weights)
        ok2 = _close(xhat[clean], want2[clean], DEC_RTOL, DEC_ATOL)
        assert ok2.all(), f"{ctx}: decode differs from f_ref @ W_dec + b_dec in a clean row"
