#!/usr/bin/env python3
"""bench/train.py - our CPU training step against the GEMM floor and PyTorch, in one run.

Runs build/bench/bench_train (the encoder GEMM alone, both as plain
multi-threaded cblas_sgemm and as sae_sgemm, then our trainer_step for each
arch) and bench/train_torch.py under /usr/bin/python3 (Debian's python3-torch:
the dense PyTorch-CPU step a user would write), with the same thread count for
everything: OMP_NUM_THREADS = OPENBLAS_NUM_THREADS = torch.set_num_threads =
--threads. Prints one table:
  gemm ms (the floor: the faster of sae_sgemm and cblas_sgemm, timed
  alongside each of our steps), our step ms, ours/gemm (target <= 1.5; the
  median of per-step ratios, and fastest/fastest), torch step ms,
  torch/ours (target > 1), our tokens/s.

usage: python3 bench/train.py [--build build] [--d-in 768 --d-sae 12288 --k 32 --batch 4096]
       [--threads 2] [--reps 7] [--torch-reps 5] [--arch ptopk topk ptopk_b1e-4]
"""
import argparse, datetime, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(out):
    return [json.loads(l[2:]) for l in out.splitlines() if l.startswith("# ")]


def run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit(f"bench/train.py: {cmd[0]} failed ({p.returncode})")
    return p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=12288)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--torch-warmup", type=int, default=2)
    ap.add_argument("--torch-reps", type=int, default=5)
    ap.add_argument("--arch", nargs="+", default=["ptopk", "topk", "ptopk_b1e-4"])
    ap.add_argument("--python-torch", default="/usr/bin/python3")
    ap.add_argument("-v", "--verbose", action="store_true", help="echo both programs' output")
    args = ap.parse_args()
    d, M, k, B, T = args.d_in, args.d_sae, args.k, args.batch, args.threads

    env = dict(os.environ, OMP_NUM_THREADS=str(T), OPENBLAS_NUM_THREADS=str(T))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                capture_output=True, text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=HERE, capture_output=True, text=True).stdout.strip()
        commit += " (+uncommitted changes)" if dirty else ""
    except OSError:
        commit = "?"
    load0 = os.getloadavg()[0]
    start = datetime.datetime.now().astimezone()

    exe = os.path.join(args.build, "bench", "bench_train")
    c_out = run([exe, str(d), str(M), str(k), str(B), "--warmup", str(args.warmup),
                 "--reps", str(args.reps), "--arch", ",".join(args.arch)], env)
    t_out = run([args.python_torch, os.path.join(HERE, "train_torch.py"), "--d-in", str(d),
                 "--d-sae", str(M), "--k", str(k), "--batch", str(B), "--threads", str(T),
                 "--warmup", str(args.torch_warmup), "--reps", str(args.torch_reps),
                 "--arch"] + args.arch, env)
    if args.verbose:
        print(c_out + t_out)
    c, tr = parse(c_out), parse(t_out)
    gemm = next(r for r in c if r["case"] == "gemm")
    ours = {r["arch"]: r for r in c if r["case"] == "step"}
    torch_ = {r["arch"]: r for r in tr if r["case"] == "torch_step"}
    torch_version = t_out.split()[2].rstrip(":") if t_out.startswith("train_torch") else "?"

    g_sae, g_mt = gemm["gemm_sae_s"], gemm["gemm_mt_s"]
    floor_name = "sae_sgemm" if g_sae <= g_mt else "cblas_sgemm"
    print(f"bench/train  commit {commit}  {start:%Y-%m-%d %H:%M %Z}  "
          f"({os.cpu_count()} cpus, load avg {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end)")
    print(f"shape: d_in {d}, d_sae {M}, k {k}, batch {B}; threads: OMP_NUM_THREADS={T}, "
          f"OPENBLAS_NUM_THREADS={T}, torch.set_num_threads({T}); torch {torch_version}")
    print(f"encoder GEMM [{B},{d}]x[{d},{M}] alone, alternated, median (min) of "
          f"{gemm['gemm_sae_n']}: sae_sgemm (OpenMP {T} x 1-thread OpenBLAS) "
          f"{g_sae*1e3:.1f} ms ({gemm['gemm_sae_min_s']*1e3:.1f}), cblas_sgemm (OpenBLAS "
          f"{gemm['blas_threads']} threads) {g_mt*1e3:.1f} ms ({gemm['gemm_mt_min_s']*1e3:.1f})"
          f"; floor = {floor_name}")
    print(f"ours: trainer_step, warm-up {args.warmup}, >= {args.reps} steps each paired with "
          f"one {floor_name} (the gemm column); torch: warm-up {args.torch_warmup}, "
          f"{args.torch_reps} steps; medians")
    print("ptopk_b1e-4 = ptopk at beta 1e-4 (late-training, saturated gates); the others "
          "at beta 5 (warm-up)")
    hdr = (f"{'arch':12} {'gemm ms':>8} {'ours ms':>8} {'ours/gemm':>9} {'(min/min)':>9} "
           f"{'torch ms':>9} {'torch/ours':>10} {'(min/min)':>9} {'ours tok/s':>10}")
    print(hdr)
    print("-" * len(hdr))
    for a in args.arch:
        o, t = ours.get(a), torch_.get(a)
        if not o:
            continue
        ts = t["step_s"] if t else float("nan")
        tmin = t["step_min_s"] if t else float("nan")
        print(f"{a:12} {o['gemm_s']*1e3:8.1f} {o['step_s']*1e3:8.1f} "
              f"{o['ratio_median']:9.2f} {o['step_min_s']/o['gemm_min_s']:9.2f} "
              f"{ts*1e3:9.1f} {ts/o['step_s']:10.2f} {tmin/o['step_min_s']:9.2f} "
              f"{B/o['step_s']:10.0f}")
    print("ours/gemm: median over steps of step / the GEMM just before it; (min/min): "
          "fastest / fastest (the least disturbed on a shared machine)")
    print("targets: ours/gemm <= 1.5, torch/ours > 1 (DESIGN.md section 7)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
