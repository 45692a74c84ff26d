#!/usr/bin/env bash
# Installs what saed needs on Debian 12: build tools and libraries from apt,
# the Python test tools from pip. Safe to run again: it installs only what is
# missing.
set -euo pipefail

APT_PACKAGES=(
  build-essential meson ninja-build pkg-config
  libjansson-dev libmicrohttpd-dev liblmdb-dev libopenblas-dev librandom123-dev
  clang libclang-rt-14-dev            # libFuzzer targets
  python3 python3-pip curl
  python3-torch                       # the independent reference of a training step (/usr/bin/python3)
)
PIP_PACKAGES=(numpy safetensors pytest)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own python3 refuses pip installs into the system (PEP 668); the
# test tools go to the user site there, or straight in on other Pythons.
pip_missing=()
for p in "${PIP_PACKAGES[@]}"; do
  python3 -c "import $p" 2>/dev/null || pip_missing+=("$p")
done
if [ ${#pip_missing[@]} -gt 0 ]; then
  echo "setup: pip installing ${pip_missing[*]}"
  python3 -m pip install -q "${pip_missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${pip_missing[@]}"
fi
