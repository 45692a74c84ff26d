"""bench/profile.py - profiling throughput against bare encoding, and flat memory.

1. Throughput: bench_profile (bench/profile.c) times corpus_read_rows + sae_encode over a
   corpus against profile_run over the same corpus and model, in one process; the ratio
   profile/encode throughput is what DESIGN.md's profile target asks about (>= 0.70).
   Also the end-to-end `saectl profile` wall time, LMDB writes included.
2. Memory: `saectl profile` over the first N and then 3N rows of one corpus, peak RSS of
   each run from wait4's rusage. Flat means the 3N run's peak is within a few MB of N's,
   while the corpus read grows 3x.

usage: python3 bench/profile.py [--build build] [--work /tmp/bench_profile] [--tokens 1800000]
                                [--throughput-tokens 300000]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "reference"))
import make_ckpt  # noqa: E402


def peak_rss_mb(argv) -> tuple[float, float]:
    """Runs argv; returns (peak RSS in MB, wall seconds)."""
    t0 = time.monotonic()
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(map(str, argv))}")
    return ru.ru_maxrss / 1024.0, time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(REPO / "build"))
    ap.add_argument("--work", default="/tmp/bench_profile")
    ap.add_argument("--tokens", type=int, default=1800000,
                    help="corpus length; memory is measured at a third of it and all of it")
    ap.add_argument("--throughput-tokens", type=int, default=300000)
    ap.add_argument("--d-in", type=int, default=128)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    a = ap.parse_args()
    saectl = Path(a.build) / "src" / "cli" / "saectl"
    bench = Path(a.build) / "bench" / "bench_profile"
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus, model = work / f"corpus_{a.d_in}_{a.tokens}", work / f"model_{a.d_in}_{a.d_sae}_{a.k}"
    if not (corpus / "dataset.json").exists():
        subprocess.run([str(saectl), "synth", "--out", str(corpus), "--d-in", str(a.d_in),
                        "--features", str(4 * a.d_in), "--tokens", str(a.tokens), "--seed", "1"],
                       check=True, stderr=subprocess.DEVNULL)
    if not (model / "cfg.json").exists():
        rng = np.random.default_rng(0)
        make_ckpt.write_native(model, make_ckpt.native_cfg("topk", a.d_in, a.d_sae, k=a.k),
                               make_ckpt.random_weights(rng, "topk", a.d_in, a.d_sae))
    out = subprocess.run([str(bench), str(model), str(corpus), str(a.throughput_tokens)],
                         check=True,
                         capture_output=True, text=True).stdout
    print(out, end="")
    corpus_mb = a.tokens * a.d_in * 4 / 2**20
    rows, peaks = [a.tokens // 3, a.tokens], []
    for n in rows:
        state = work / f"state_{n}"
        shutil.rmtree(state, ignore_errors=True)     # a fresh store: a profile of its own
        rss, wall = peak_rss_mb([saectl, "profile", "--model", model, "--corpus", corpus,
                                 "--state", state, "--model-id", "bench", "--max-tokens", n])
        print(f"saectl profile rows={n} corpus read={corpus_mb * n / a.tokens:.0f} MB "
              f"wall={wall:.2f} s ({n / wall:.0f} rows/s end to end) peak RSS={rss:.1f} MB")
        print(f"# rss rows={n} corpus_mb={corpus_mb * n / a.tokens:.1f} peak_rss_mb={rss:.1f} "
              f"wall_s={wall:.3f}")
        peaks.append(rss)
    print(f"memory: 3x the rows, peak RSS {peaks[0]:.1f} -> {peaks[1]:.1f} MB "
          f"({100 * (peaks[1] / peaks[0] - 1):+.1f}%); the corpus read is "
          f"{corpus_mb / peaks[1]:.1f}x the peak RSS")


if __name__ == "__main__":
    main()
