#!/usr/bin/env bash
# bench/gpu/profile.sh - where a GPU training step's time goes, kernel by kernel:
# gpu_train --quick at one width under Nsight Systems (nsys), its CUDA kernel
# summary (total time, calls, average per kernel name) for the whole run (topk,
# then ptopk early and late, plus the GEMM alone). Falls back to Nsight Compute
# (ncu: the kernels of one step of each) when nsys is missing (the lent
# machines have only ncu). Run after tests/gpu/run.sh
# (it uses build-gpu/):
#   bench/gpu/profile.sh [d_sae (default 12288)]
# Output goes to $OUT (the device tool's folder) or ./build-gpu-out.
set -u -o pipefail
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-$PWD/build-gpu-out}
mkdir -p "$OUT"
M=${1:-12288}
BIN=build-gpu/bench/gpu/gpu_train
[ -x "$BIN" ] || { echo "profile: $BIN not built (run tests/gpu/run.sh first)"; exit 1; }
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
find_tool() {
    command -v "$1" 2>/dev/null && return
    ls "$CUDA_HOME"/bin/"$1" "$CUDA_HOME"/nsight-*/"$1" "$CUDA_HOME"/nsight-*/*/"$1" \
        /opt/nvidia/nsight-*/*/bin/"$1" 2>/dev/null | head -1
}
NSYS=$(find_tool nsys)
NCU=$(find_tool ncu)
if [ -n "$NSYS" ]; then
    echo "profile: $NSYS, gpu_train --quick --d-sae $M"
    "$NSYS" profile -q -t cuda -o "$OUT/train_$M" -f true "$BIN" --quick --d-sae "$M" \
        >"$OUT/profile_run.log" 2>&1
    "$NSYS" stats -q -r cuda_gpu_kern_sum -f csv "$OUT/train_$M.nsys-rep" 2>/dev/null |
        python3 -c '
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if len(r) > 8]
head, rows = rows[0], rows[1:]
ti, ci, ni = head.index("Total Time (ns)"), head.index("Instances"), head.index("Name")
total = sum(float(r[ti]) for r in rows)
print("%9s %6s %9s  %s" % ("total ms", "calls", "avg us", "kernel"))
for r in sorted(rows, key=lambda r: -float(r[ti]))[:30]:
    t, n = float(r[ti]), int(r[ci])
    print("%9.2f %6d %9.1f  %s" % (t / 1e6, n, t / n / 1e3, r[ni][:90]))
print("%9.2f  all kernels" % (total / 1e6))' | tee "$OUT/profile.txt"
    rm -f "$OUT/train_$M.sqlite"
elif [ -n "$NCU" ]; then
    # Nsight Compute serialises kernels and flushes the caches before each, so
    # its times are upper bounds (the phase timers give the real step)
    for arch in topk ptopk ptopk_late; do
        echo "profile: no nsys; $NCU on one $arch step's kernels (d_sae $M), us"
        "$NCU" --metrics gpu__time_duration.sum --launch-skip 400 --launch-count 48 \
            "$BIN" --quick --d-sae "$M" --arch "$arch" >"$OUT/ncu_$arch.log" 2>&1
        python3 - "$OUT/ncu_$arch.log" <<'PY' | tee -a "$OUT/profile.txt"
import re, sys
name, total, rows = None, 0.0, []
for line in open(sys.argv[1]):
    m = re.match(r"  (?:void )?([A-Za-z_][\w:<>, ]*?)[(<]", line)
    if m and "Context" in line:
        name = m.group(1)
    t = re.match(r"\s+gpu__time_duration.sum\s+(\w+)\s+([\d.,]+)", line)
    if t and name:
        us = float(t.group(2).replace(",", "")) * {"ns": 1e-3, "us": 1.0, "ms": 1e3}[t.group(1)]
        rows.append((us, name))
        total += us
for us, n in rows:
    print("%9.1f  %s" % (us, n))
print("%9.1f  all %d kernels" % (total, len(rows)))
PY
    done
else
    echo "profile: neither nsys nor ncu found"
    ls "$CUDA_HOME"/bin | head -50
fi
