#!/usr/bin/env bash
# The demo: installs what is needed, builds, writes a synthetic corpus with a
# known ground truth, trains a small Probabilistic TopK SAE on it (about 15 s
# on two cores), evaluates it against the truth, profiles it into the feature store
# (LMDB), and serves it with saed on
# 127.0.0.1 (PORT, default 8080), printing curl commands that work as printed.
# Everything lands in demo/ (DEMO_DIR to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DEMO_DIR:-demo}
bash scripts/setup.sh
bash scripts/build.sh
SAECTL=build/src/cli/saectl
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)   # absolute, so the printed curl commands work from anywhere

echo "== a synthetic corpus: 256 true features in 64 dimensions, 400k tokens"
[ -f "$DIR/corpus/dataset.json" ] ||
  $SAECTL synth --out "$DIR/corpus" --d-in 64 --features 256 --tokens 400000 --seed 1

echo "== training a ptopk SAE (k 8, 1024 latents)"
rm -rf "$DIR/model"
$SAECTL train --arch ptopk --k 8 --d-sae 1024 --corpus "$DIR/corpus" --out "$DIR/model" \
  --steps 1500 --batch 1024 --lr 2e-3 --seed 1 --checkpoint-every 500

echo "== evaluation against the true dictionary"
$SAECTL eval --model "$DIR/model" --corpus "$DIR/corpus" --truth "$DIR/corpus" --tokens 100000

echo "== profiling it: per-feature statistics, percentile buckets and examples (LMDB in $DIR/state)"
mkdir -p "$DIR/state"
$SAECTL profile --model "$DIR/model" --corpus "$DIR/corpus" --state "$DIR/state" --model-id demo \
  --max-tokens 100000
$SAECTL feature --state "$DIR/state" --model-id demo --feature 0 > "$DIR/feature0.json"
$SAECTL examples --state "$DIR/state" --model-id demo --feature 0 --kind top --limit 3 > "$DIR/examples0.json"
echo "feature 0: $(head -c 400 "$DIR/feature0.json") ..."
echo "its top examples: $(head -c 300 "$DIR/examples0.json") ..."

echo "== serving it: saed on 127.0.0.1:${PORT:-8080} (Ctrl-C stops it)"
PORT=${PORT:-8080}
ROW=$(python3 - "$DIR" <<'PY'
import sys, json
from safetensors.numpy import load_file
x = load_file(f"{sys.argv[1]}/corpus/shard_00000.safetensors")["activations"][0]
print(json.dumps({"inputs": [[round(float(v), 5) for v in x]]}))
PY
)
echo "$ROW" > "$DIR/row.json"
cat <<EOT
Try, from another terminal:
  curl -s http://127.0.0.1:$PORT/readyz
  curl -s http://127.0.0.1:$PORT/v1/models
  curl -s -X POST -H 'Content-Type: application/json' --data @$DIR/row.json http://127.0.0.1:$PORT/v1/models/demo/encode
  curl -s http://127.0.0.1:$PORT/v1/models/demo/features/0/vector
  curl -s 'http://127.0.0.1:$PORT/v1/models/demo/features?sort=density&limit=5'
  curl -s http://127.0.0.1:$PORT/v1/models/demo/features/0
  curl -s 'http://127.0.0.1:$PORT/v1/models/demo/features/0/examples?kind=top&limit=2'
  curl -s http://127.0.0.1:$PORT/metrics | head
EOT
exec build/src/server/saed --listen "127.0.0.1:$PORT" --state-dir "$DIR/state" \
  --model-root "$DIR" --model "demo=$DIR/model"
