"""gpu_encode_torch.py - the PyTorch encode a user would write, timed on the
same shapes as bench/gpu/gpu_encode (d_in 768, d_sae 24576, k 32,
B = 1, 64, 4096; topk and ptopk with layernorm, beta 1e-4, lambda 1e-4).

    topk:  z = (x - b_dec) @ W_enc + b_enc; v, i = z.topk(k); v = v.relu()
    ptopk: a = (x - b_dec) @ W_enc + b_enc
           s = sigmoid(layer_norm(a) / beta) + lambda |a|
           i = s.topk(k).indices; v = a.gather(1, i)

Two times per case, each the median of many repeats after warm-ups, FP32
(TF32 off, as saed's default):
    torch_dev_ms  x already on the GPU, codes left there (CUDA events)
    torch_ms      x a CPU tensor in, codes back on the CPU (wall clock), as
                  sae_encode does
Prints one `RESULT arch=... B=... torch_dev_ms=... torch_ms=...` line per
case (tests/gpu/run.sh joins them with gpu_encode's). Note torch ranks ptopk
in float32, which saed does not (see DESIGN.md section 3): the same work, a
less faithful answer. --quick: fewer repeats.
"""
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

D_IN, D_SAE, K = 768, 24576, 32
BETA, LAMBDA = 1e-4, 1e-4


def encode(arch, x, W_enc, b_enc, b_dec):
    a = (x - b_dec) @ W_enc + b_enc
    if arch == "topk":
        v, i = a.topk(K, dim=1)
        return i, v.relu()
    s = torch.sigmoid(F.layer_norm(a, (D_SAE,)) / BETA) + LAMBDA * a.abs()
    i = s.topk(K, dim=1).indices
    return i, a.gather(1, i)


def main():
    quick = "--quick" in sys.argv
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dev = torch.device("cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}, FP32", flush=True)
    g = torch.Generator().manual_seed(7)
    W_enc = (torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5).to(dev)
    b_enc = (0.1 * torch.randn(D_SAE, generator=g)).to(dev)
    b_dec = (0.1 * torch.randn(D_IN, generator=g)).to(dev)
    x_cpu_all = 0.3 + torch.randn(4096, D_IN, generator=g)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for arch in ("topk", "ptopk"):
        for B in (1, 64, 4096):
            reps = 10 if quick else (40 if B >= 4096 else 200)
            warm = 5
            x_cpu = x_cpu_all[:B].contiguous()
            x_dev = x_cpu.to(dev)
            dev_ms = []
            for r in range(warm + reps):
                start.record()
                encode(arch, x_dev, W_enc, b_enc, b_dec)
                stop.record()
                stop.synchronize()
                if r >= warm:
                    dev_ms.append(start.elapsed_time(stop))
            h2h_ms = []
            for r in range(warm + reps):
                t0 = time.perf_counter()
                i, v = encode(arch, x_cpu.to(dev), W_enc, b_enc, b_dec)
                i, v = i.cpu(), v.cpu()
                if r >= warm:
                    h2h_ms.append((time.perf_counter() - t0) * 1e3)
            print(f"RESULT arch={arch} B={B} torch_dev_ms={statistics.median(dev_ms):.4f} "
                  f"torch_ms={statistics.median(h2h_ms):.4f}", flush=True)


if __name__ == "__main__":
    main()
