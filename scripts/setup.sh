#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine for modelrepo: the system packages the local stack
# uses and a virtual environment in ./.venv with `pip install -e '.[dev]'`.
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# busybox-static: the busybox root of the emulator's pods; libb64-0d: perf_analyzer (benchmarks);
# chromium + chromium-driver: the real-browser widget test.
SYSTEM_PACKAGES=(busybox-static libb64-0d chromium chromium-driver util-linux)
missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
