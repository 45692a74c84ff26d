#!/usr/bin/python3
"""bench/train_torch.py - the straightforward dense PyTorch-CPU training step.

What a user would write for the same architecture and recipe as our
trainer_step: nn.Parameter W_enc [d, M], b_enc [M], W_dec [M, d], b_dec [d];
center_unit_norm preprocessing; a = (x - b_dec) @ W_enc + b_enc;
  topk:  top-k of a, ReLU, scattered into a dense [B, M] code;
  ptopk: LayerNorm over the latents (no affine), logistic noise,
         z = sigmoid((l + log u - log(1-u)) / beta), s = z + lambda |a|,
         top-k of s (no gradient through the selection), a gathered at the
         selected latents and scattered into a dense [B, M] code;
dense decode (f @ W_dec + b_dec), MSE (mean over rows of the squared error
summed over d), backward, the decoder-gradient component parallel to each
row removed, global grad-norm clip 10, Adam (lr 5e-4, betas 0.9/0.99,
eps 1e-8), decoder rows renormalised. Times the median of repeated steps
after warm-up and prints one line per arch, machine-readable after '#'.

Run with Debian's torch (/usr/bin/python3, python3-torch 1.13). Threads:
torch.set_num_threads(--threads); its GEMMs go through OpenBLAS, whose
thread count is OPENBLAS_NUM_THREADS (bench/train.py sets it to the same).

usage: /usr/bin/python3 bench/train_torch.py [--d-in 768 --d-sae 12288 --k 32 --batch 4096]
       [--threads 2] [--warmup 2] [--reps 5] [--arch ptopk topk ptopk_b1e-4]
"""
import argparse, json, os, sys, time

import torch
import torch.nn.functional as F


class SAE(torch.nn.Module):
    def __init__(self, d, M, gen):
        super().__init__()
        W_dec = torch.randn(M, d, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W_dec)
        self.W_enc = torch.nn.Parameter(W_dec.t().clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(M))
        self.b_dec = torch.nn.Parameter(torch.zeros(d))


def preprocess(x):  # center_unit_norm, as our trainer's default
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True)


def make_step(arch, sae, opt, k, beta, lam):
    M = sae.b_enc.shape[0]

    def step(x):
        x = preprocess(x)
        a = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        if arch == "topk":
            vals, idx = a.topk(k, dim=1)
            f = torch.zeros_like(a).scatter(1, idx, F.relu(vals))
        else:
            with torch.no_grad():
                l = F.layer_norm(a, (M,), eps=1e-5)
                u = torch.rand_like(a).clamp_(1e-7, 1 - 1e-7)
                z = torch.sigmoid((l + torch.log(u) - torch.log1p(-u)) / beta)
                s = z + lam * a.abs()
                idx = s.topk(k, dim=1).indices
            f = torch.zeros_like(a).scatter(1, idx, a.gather(1, idx))
        xhat = f @ sae.W_dec + sae.b_dec
        loss = (xhat - x).pow(2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W, g = sae.W_dec, sae.W_dec.grad
            g -= (g * W).sum(dim=1, keepdim=True) * W
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 10.0)
        opt.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=1, keepdim=True)
        return loss.item()

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=12288)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--arch", nargs="+", default=["ptopk", "topk", "ptopk_b1e-4"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    d, M, k, B = args.d_in, args.d_sae, args.k, args.batch
    print(f"train_torch torch {torch.__version__}: torch threads {torch.get_num_threads()}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}", flush=True)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(B, d, generator=gen) * 2 - 1 for _ in range(2)]
    for name in args.arch:
        arch = "topk" if name == "topk" else "ptopk"
        beta = 1e-4 if name == "ptopk_b1e-4" else 5.0
        sae = SAE(d, M, gen)
        with torch.no_grad():
            sae.b_dec.copy_(preprocess(xs[0]).mean(dim=0))
        opt = torch.optim.Adam(sae.parameters(), lr=5e-4, betas=(0.9, 0.99), eps=1e-8)
        step = make_step(arch, sae, opt, k, beta, 1e-4)
        for i in range(args.warmup):
            step(xs[i % len(xs)])
        times = []
        for i in range(args.reps):
            t0 = time.perf_counter()
            loss = step(xs[i % len(xs)])
            times.append(time.perf_counter() - t0)
        times.sort()
        n = len(times)
        med = times[n // 2] if n % 2 else 0.5 * (times[n // 2 - 1] + times[n // 2])
        print(f"{name:12} torch step {med*1e3:.1f} ms (min {times[0]*1e3:.1f}, "
              f"max {times[-1]*1e3:.1f}, n {n}), loss {loss:.4g}", flush=True)
        print("# " + json.dumps({"case": "torch_step", "arch": name, "B": B, "d_in": d,
                                 "d_sae": M, "k": k, "beta": beta, "step_s": med,
                                 "step_min_s": times[0], "step_max_s": times[-1],
                                 "step_n": n, "threads": torch.get_num_threads()}),
              flush=True)
        del sae, opt, step


if __name__ == "__main__":
    main()
