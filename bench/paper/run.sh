#!/usr/bin/env bash
# The seed paper's experiments, one command: builds saectl (build-paper/, CPU
# only) if needed, then runs bench/paper/paper.py, which writes the corpus,
# trains the grid two runs at a time, evaluates, and writes the table and the
# SVG figures under bench/paper/out/ (and, for the synthetic run, docs/paper/).
#   bash bench/paper/run.sh                 # the synthetic run shown in docs/paper.md
#   bash bench/paper/run.sh --corpus DIR    # a real activation corpus, the paper's settings
#   bash bench/paper/run.sh --calibrate     # the ReLU/Gated coefficient sweep
# Every other flag goes to paper.py (--help). SAECTL=path uses another binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${SAECTL:-}" ]; then
  SAECTL=build-paper/src/cli/saectl
  # built when missing (PAPER_REBUILD=1: brought up to date with ninja first)
  if [ ! -x "$SAECTL" ] || [ -n "${PAPER_REBUILD:-}" ]; then
    [ -f build-paper/build.ninja ] ||
      meson setup build-paper -Dcuda=disabled --buildtype=release >/dev/null
    ninja -C build-paper src/cli/saectl >/dev/null
  fi
fi
export SAECTL
exec python3 bench/paper/paper.py "$@"
