"""train_curves.py - 200 steps of `saectl train` on the CPU and on the GPU, from the same
seed on the same synthetic corpus: the loss curves must match within 1%.

For topk (with AuxK) and ptopk: the mean loss of every window of 20 steps on the GPU is
within 1% of the CPU's, and so are the final fvu and l0 (metrics.jsonl). Both runs draw the
same Philox noise and the same batches; only float rounding differs (cuBLAS vs OpenBLAS),
so the curves stay together. Prints one line per run and a table; exit 1 on a mismatch.

    python3 tests/gpu/train_curves.py SAECTL WORKDIR
"""
import json
import subprocess
import sys
import time
from pathlib import Path

STEPS, WINDOW, TOL = 200, 20, 0.01
RUNS = [
    ("topk", ["--arch", "topk", "--k", "16", "--auxk"]),
    ("ptopk", ["--arch", "ptopk", "--k", "16"]),
]


def run(cmd):
    t0 = time.time()
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr[-2000:]}")
    return time.time() - t0


def losses(out: Path):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows


def main():
    saectl, work = Path(sys.argv[1]), Path(sys.argv[2])
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus"
    if not (corpus / "dataset.json").exists():
        run([saectl, "synth", "--out", corpus, "--d-in", 128, "--features", 512,
             "--tokens", 400000, "--seed", 7])
    bad = 0
    table = []
    for name, flags in RUNS:
        res = {}
        for dev in ("cpu", "cuda"):
            out = work / f"{name}_{dev}"
            secs = run([saectl, "train", "--corpus", corpus, "--out", out, "--d-sae", 1024,
                        "--steps", STEPS, "--batch", 1024, "--seed", 3, "--device", dev] + flags)
            res[dev] = (losses(out), secs)
        cpu, gpu = res["cpu"][0], res["cuda"][0]
        worst = 0.0
        for w in range(0, STEPS, WINDOW):
            c = sum(r["loss"] for r in cpu[w:w + WINDOW]) / WINDOW
            g = sum(r["loss"] for r in gpu[w:w + WINDOW]) / WINDOW
            worst = max(worst, abs(g - c) / c)
        fvu_rel = abs(gpu[-1]["fvu"] - cpu[-1]["fvu"]) / cpu[-1]["fvu"]
        l0_rel = abs(gpu[-1]["l0"] - cpu[-1]["l0"]) / max(cpu[-1]["l0"], 1e-9)
        ok = len(cpu) == len(gpu) == STEPS and worst <= TOL and fvu_rel <= TOL and l0_rel <= TOL
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: worst window loss diff {worst:.2e}, final fvu "
              f"{gpu[-1]['fvu']:.4f} vs {cpu[-1]['fvu']:.4f}, l0 {gpu[-1]['l0']:.2f} vs "
              f"{cpu[-1]['l0']:.2f}; {res['cuda'][1]:.1f} s on the GPU, {res['cpu'][1]:.1f} s "
              f"on the CPU")
        table.append(f"{name:6s} loss@1 {cpu[0]['loss']:.4f}/{gpu[0]['loss']:.4f} "
                     f"loss@{STEPS} {cpu[-1]['loss']:.5f}/{gpu[-1]['loss']:.5f} (cpu/gpu) "
                     f"worst window {worst:.2e}")
    print("\n".join(table))
    print(f"curves: {len(RUNS) - bad} passed, {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
