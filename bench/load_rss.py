#!/usr/bin/env python3
"""bench/load_rss.py - peak memory of loading a checkpoint, against the size
of its weights as float32.

Writes a topk checkpoint (d_in 768, d_sae 24576 by default) with the real
safetensors package, in f32 and in bf16 (W_enc stored [d_in, d_sae], so the
load transposes it), runs `saectl inspect` on each (which loads every weight),
and reads the peak RSS from the kernel (getrusage of the child). The ratio
subtracts the RSS of the same command on a tiny model. Target: < 1.3.

usage: python3 bench/load_rss.py [--build build] [--d-in 768] [--d-sae 24576]
"""
import argparse, json, os, subprocess, tempfile
import numpy as np
from safetensors.numpy import save_file


def write_model(path, d, M, dtype):
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    t = {"W_enc": rng.standard_normal((d, M), dtype=np.float32),
         "W_dec": rng.standard_normal((M, d), dtype=np.float32),
         "b_enc": np.zeros(M, np.float32), "b_dec": np.zeros(d, np.float32)}
    if dtype == "float16":
        t = {k: v.astype(np.float16) for k, v in t.items()}
    save_file(t, f"{path}/sae_weights.safetensors")
    with open(f"{path}/cfg.json", "w") as f:
        json.dump({"d_in": d, "d_sae": M, "architecture": "topk", "k": 32, "dtype": dtype}, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=24576)
    a = ap.parse_args()
    saectl = os.path.join(a.build, "src", "cli", "saectl")
    with tempfile.TemporaryDirectory() as tmp:
        write_model(f"{tmp}/tiny", 8, 16, "float32")
        # each measurement in a fresh child: ru_maxrss of children is a max
        base = int(subprocess.run(
            ["python3", "-c", "import resource,subprocess,sys;"
             "subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL);"
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
             saectl, "inspect", "--model", f"{tmp}/tiny"],
            check=True, capture_output=True, text=True).stdout)
        weights_mib = 2 * a.d_in * a.d_sae * 4 / 2**20
        print(f"bench/load_rss d_in={a.d_in} d_sae={a.d_sae}: f32 weights {weights_mib:.1f} MiB, "
              f"baseline RSS {base / 1024:.1f} MiB")
        for dtype in ("float32", "float16"):
            write_model(f"{tmp}/{dtype}", a.d_in, a.d_sae, dtype)
            peak = int(subprocess.run(
                ["python3", "-c", "import resource,subprocess,sys;"
                 "subprocess.run(sys.argv[1:],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL,check=True);"
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)",
                 saectl, "inspect", "--model", f"{tmp}/{dtype}"],
                check=True, capture_output=True, text=True).stdout)
            ratio = (peak - base) / 1024 / weights_mib
            print(f"  {dtype:8} on disk: peak RSS {peak / 1024:.1f} MiB, "
                  f"(peak - baseline) / f32 weights = {ratio:.3f}  (target < 1.3)")


if __name__ == "__main__":
    main()
