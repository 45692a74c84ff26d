#!/usr/bin/env bash
# The demo: installs what is needed, builds, writes a synthetic corpus with a
# known ground truth, trains a small Probabilistic TopK SAE on it (about a
# minute), evaluates it against the truth, and encodes a few rows.
# Everything lands in demo/ (DEMO_DIR to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DEMO_DIR:-demo}
bash scripts/setup.sh
bash scripts/build.sh
SAECTL=build/src/cli/saectl
mkdir -p "$DIR"

echo "== a synthetic corpus: 256 true features in 64 dimensions, 400k tokens"
[ -f "$DIR/corpus/dataset.json" ] ||
  $SAECTL synth --out "$DIR/corpus" --d-in 64 --features 256 --tokens 400000 --seed 1

echo "== training a ptopk SAE (k 8, 1024 latents)"
rm -rf "$DIR/model"
$SAECTL train --arch ptopk --k 8 --d-sae 1024 --corpus "$DIR/corpus" --out "$DIR/model" \
  --steps 1500 --batch 1024 --lr 2e-3 --seed 1 --checkpoint-every 500

echo "== evaluation against the true dictionary"
$SAECTL eval --model "$DIR/model" --corpus "$DIR/corpus" --truth "$DIR/corpus" --tokens 100000

echo "== encoding 4 rows"
python3 - "$DIR" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file
d = sys.argv[1]
x = load_file(f"{d}/corpus/shard_00000.safetensors")["activations"][:4].astype(np.float32)
np.save(f"{d}/x.npy", x)
PY
$SAECTL encode --model "$DIR/model" --input "$DIR/x.npy" --output "$DIR/codes.safetensors"
python3 - "$DIR" <<'PY'
import sys
from safetensors.numpy import load_file
c = load_file(f"{sys.argv[1]}/codes.safetensors")
for r, (i, v) in enumerate(zip(c["indices"], c["values"])):
    print(f"row {r}: " + ", ".join(f"{a}:{b:.3f}" for a, b in zip(i, v)))
PY
echo "== done: model in $DIR/model (SAELens-compatible cfg.json + sae_weights.safetensors)"
