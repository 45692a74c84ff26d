#!/usr/bin/env bash
# Builds saed into build/ (release; CUDA when nvcc is there). Used by demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d build ] || meson setup build >/dev/null
ninja -C build >/dev/null
