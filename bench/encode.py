#!/usr/bin/env python3
"""bench/encode.py - our encode against the numpy way, in the same run.

Runs build/bench/bench_encode (ours and the GEMM floor: the faster of OpenBLAS
threaded and our OpenMP split of single-threaded OpenBLAS; ours/gemm is its
median over repeats of encode / the faster GEMM, the three run back to back)
and times the straightforward numpy encoder a user would write (matmul +
argpartition, plus the preprocessing and the ptopk score), on the same shapes. Prints one table
with the ratios: encode/gemm (target <= 1.25 at B=4096), numpy/encode (target
> 1), dense/sparse decode (target >= 20).

usage: python3 bench/encode.py [--build build] [--d-in 768 --d-sae 24576 --k 32] [--batches 1 64 4096]
"""
import argparse, json, os, subprocess, sys, time
import numpy as np


def median_time(fn, min_seconds):
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 50 and (len(times) < 3 or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def numpy_encoder(arch, W_enc, b_enc, b_dec, k):
    def encode(x):
        if arch == "ptopk":  # center_unit_norm, as the C bench's ptopk model
            x = x - x.mean(axis=1, keepdims=True)
            x = x / np.linalg.norm(x, axis=1, keepdims=True)
        a = (x - b_dec) @ W_enc + b_enc
        if arch == "ptopk":
            l = (a - a.mean(axis=1, keepdims=True)) / np.sqrt(a.var(axis=1, keepdims=True) + 1e-5)
            s = 1.0 / (1.0 + np.exp(-l / 1e-4)) + 1e-4 * np.abs(a)
        else:
            s = a
        idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(a, idx, axis=1)
        return idx, (vals if arch == "ptopk" else np.maximum(vals, 0))
    return encode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 4096])
    args = ap.parse_args()
    d, M, k = args.d_in, args.d_sae, args.k
    exe = os.path.join(args.build, "bench", "bench_encode")
    out = subprocess.run([exe, str(d), str(M), str(k)] + [str(b) for b in args.batches],
                         check=True, capture_output=True, text=True).stdout
    ours = {(r["arch"], r["B"]): r for r in
            (json.loads(l[2:]) for l in out.splitlines() if l.startswith("# "))}

    rng = np.random.default_rng(0)
    W_enc = (rng.uniform(-1, 1, (d, M)) / np.sqrt(d)).astype(np.float32)
    b_enc = (0.01 * rng.uniform(-1, 1, M)).astype(np.float32)
    b_dec = (0.01 * rng.uniform(-1, 1, d)).astype(np.float32)
    print(f"bench/encode d_in={d} d_sae={M} k={k}; numpy {np.__version__}; median times in ms")
    print(f"{'arch':6} {'B':>5} {'gemm':>9} {'ours':>9} {'numpy':>9} {'ours/gemm':>9} "
          f"{'numpy/ours':>10} {'dense/sparse decode':>19}")
    for arch in ("ptopk", "topk"):
        enc = numpy_encoder(arch, W_enc, b_enc, b_dec, k)
        for B in args.batches:
            x = rng.uniform(-1, 1, (B, d)).astype(np.float32)
            t_np = median_time(lambda: enc(x), 3.0 if B >= 1024 else 1.0)
            r = ours[(arch, B)]
            print(f"{arch:6} {B:5d} {r['gemm_s']*1e3:9.3f} {r['encode_s']*1e3:9.3f} "
                  f"{t_np*1e3:9.3f} {r['encode_over_gemm']:9.3f} {t_np/r['encode_s']:10.2f} "
                  f"{r['dense_decode_s']/r['sparse_decode_s']:19.1f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
