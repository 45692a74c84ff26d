"""gpu_train_torch.py - one SAE training step on the GPU, written the way
EleutherAI's sparsify trains a TopK SAE (linear + topk forward, embedding-bag
decode, autograd backward), timed on the shapes of the GPU training benchmark
(d_in 768, d_sae 12288 and 24576, k 32, batch 8192).

Parameters as sparsify lays them out: W_enc [M, d] (nn.Linear weight),
b_enc [M], W_dec [M, d] with unit-norm rows, b_dec [d]; W_dec rows random unit
vectors, W_enc = W_dec.clone(), biases zero.

    topk:  pre = linear(x - b_dec, W_enc, b_enc)
           v, i = pre.topk(k, sorted=False); v = v.relu()
    ptopk: a = linear(x - b_dec, W_enc, b_enc)
           gate = sigmoid((layer_norm(a) + log u - log(1-u)) / beta), u ~ U(0,1)
           i = (gate + lambda |a|).topk(k, sorted=False).indices
           v = a.gather(1, i)      (beta 1.0, mid-annealing; lambda 1e-4)
    both:  xhat = embedding_bag(i, W_dec, per_sample_weights=v, mode="sum") + b_dec
           loss = ((xhat - x)**2).sum(1).mean()

ptopk uses the straight-through form of our CPU reference (bench/train_torch.py):
the value is a itself, so the gradient reaches a at the selected latents only,
and the score (layer norm, noise, gate) is built under no_grad, as there.
After loss.backward(): the component of W_dec.grad parallel to each W_dec row
is removed (sparsify's decoder step), global grad-norm clip 10, Adam (lr 5e-4,
betas 0.9/0.99, eps 1e-8; --fused for fused=True), W_dec rows renormalised,
zero_grad(set_to_none=True). x is already on the GPU and preprocessed; steps
rotate among 4 pre-generated batches so caches do not flatter.

Two times per case, each the median over --steps repeats after --warmup,
FP32 with TF32 off (saed's default), CUDA events:
    torch_step_ms  one whole training step (forward, backward, optimiser)
    torch_gemm_ms  the encoder GEMM alone, F.linear(x, W_enc), to cross-check
Prints a header line, then one
`RESULT arch=... M=... B=... torch_step_ms=... torch_gemm_ms=...` per case.

usage: python3 bench/gpu_train_torch.py [--d-sae 12288,24576] [--batch 8192]
       [--k 32] [--steps 30] [--warmup 5] [--quick] [--arch topk,ptopk]
       [--fused] [--cpu-smoke]
--cpu-smoke runs a tiny shape (B 64, d 16, M 128, k 4, 2 steps) on the CPU,
wall-clock timed, only to prove the code runs (works with torch 1.13).
"""
import argparse
import os
import statistics
import sys
import time

# bench/ holds profile.py (our profiling benchmark); as the script's folder it
# would come first on sys.path and shadow the standard library's profile,
# which torch imports
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
import torch
import torch.nn.functional as F

BETA, LAMBDA = 1.0, 1e-4


def make_sae(d, M, dev, gen):
    W_dec = torch.randn(M, d, generator=gen)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec = W_dec.to(dev)
    return {"W_enc": torch.nn.Parameter(W_dec.clone()),
            "b_enc": torch.nn.Parameter(torch.zeros(M, device=dev)),
            "W_dec": torch.nn.Parameter(W_dec),
            "b_dec": torch.nn.Parameter(torch.zeros(d, device=dev))}


def make_step(arch, p, opt, k):
    W_enc, b_enc, W_dec, b_dec = p["W_enc"], p["b_enc"], p["W_dec"], p["b_dec"]
    M = b_enc.shape[0]

    def step(x):
        a = F.linear(x - b_dec, W_enc, b_enc)
        if arch == "topk":
            vals, idx = a.topk(k, dim=1, sorted=False)
            vals = vals.relu()
        else:
            with torch.no_grad():  # the selection carries no gradient
                l = F.layer_norm(a, (M,))
                u = torch.rand_like(a).clamp_(1e-7, 1 - 1e-7)
                gate = torch.sigmoid((l + torch.log(u) - torch.log1p(-u)) / BETA)
                idx = (gate + LAMBDA * a.abs()).topk(k, dim=1, sorted=False).indices
            vals = a.gather(1, idx)
        # sparse decode: sum of k weighted decoder rows per sample
        xhat = F.embedding_bag(idx, W_dec, per_sample_weights=vals, mode="sum") + b_dec
        loss = (xhat - x).pow(2).sum(dim=1).mean()
        loss.backward()
        with torch.no_grad():  # keep the update tangent to the unit-norm rows
            W_dec.grad -= (W_dec.grad * W_dec).sum(dim=1, keepdim=True) * W_dec
        torch.nn.utils.clip_grad_norm_(list(p.values()), 10.0)
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))  # in place: W_dec is the closure's
        opt.zero_grad(set_to_none=True)

    return step


def time_ms(fn, xs, warmup, reps, cuda):
    """Median ms of fn(x) over reps calls after warmup, x rotating among xs."""
    if cuda:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ms = []
    for r in range(warmup + reps):
        x = xs[r % len(xs)]
        if cuda:
            start.record()
            fn(x)
            stop.record()
            stop.synchronize()
            t = start.elapsed_time(stop)
        else:
            t0 = time.perf_counter()
            fn(x)
            t = (time.perf_counter() - t0) * 1e3
        if r >= warmup:
            ms.append(t)
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser(description="PyTorch (sparsify-style) SAE training step on the GPU")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", default="12288,24576", help="comma-separated list")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30, help="timed repeats")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--arch", default="topk,ptopk", help="comma-separated: topk, ptopk")
    ap.add_argument("--fused", action="store_true", help="torch.optim.Adam(fused=True)")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shape on the CPU")
    args = ap.parse_args()

    archs = args.arch.split(",")
    for a in archs:
        if a not in ("topk", "ptopk"):
            sys.exit(f"gpu_train_torch: unknown arch {a!r} (want topk or ptopk)")
    if args.cpu_smoke:
        if args.fused:
            sys.exit("gpu_train_torch: --fused needs CUDA parameters, not --cpu-smoke")
        dev, cuda = torch.device("cpu"), False
        d, Ms, B, k, steps, warmup = 16, [128], 64, 4, 2, 1
        print(f"torch {torch.__version__} on CPU (smoke run), FP32", flush=True)
    else:
        if not torch.cuda.is_available():
            sys.exit("gpu_train_torch: CUDA is not available (use --cpu-smoke for a CPU check)")
        dev, cuda = torch.device("cuda"), True
        d, B, k = args.d_in, args.batch, args.k
        Ms = [int(m) for m in args.d_sae.split(",")]
        steps, warmup = (5, 2) if args.quick else (args.steps, args.warmup)
        # FP32 as saed's default: no TF32 anywhere
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, FP32 (TF32 off), "
              f"d_in {d} k {k} batch {B} steps {steps} warmup {warmup} "
              f"adam {'fused' if args.fused else 'default'}", flush=True)

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)  # the ptopk noise (rand_like) on the device
    xs = [torch.randn(B, d, generator=gen).to(dev) for _ in range(4)]
    for M in Ms:
        for arch in archs:
            p = make_sae(d, M, dev, gen)
            opt_kw = {"fused": True} if args.fused else {}  # no fused= in torch 1.13
            opt = torch.optim.Adam(list(p.values()), lr=5e-4, betas=(0.9, 0.99), eps=1e-8, **opt_kw)
            step_ms = time_ms(make_step(arch, p, opt, k), xs, warmup, steps, cuda)
            W_enc = p["W_enc"].detach()
            with torch.no_grad():
                gemm_ms = time_ms(lambda x: F.linear(x, W_enc), xs, warmup, steps, cuda)
            print(f"RESULT arch={arch} M={M} B={B} torch_step_ms={step_ms:.3f} "
                  f"torch_gemm_ms={gemm_ms:.3f}", flush=True)
            del p, opt, W_enc
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
