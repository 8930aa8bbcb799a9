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

# The emulator's pods should hash like the `busybox` image users run (1.37: sha256 with SHA-NI),
# not like Debian 12's busybox 1.35 (six times slower at sha256). Fetch Debian trixie's
# busybox-static through apt (signatures checked, system sources untouched) into .venv/bin,
# where LocalCluster looks first; if that fails, the system's busybox-static is used.
if [ ! -x .venv/bin/busybox ]; then
  work="$(mktemp -d)"; chmod 755 "$work"
  mkdir -p "$work/lists/partial" "$work/archives/partial"
  echo "deb http://deb.debian.org/debian ${BUSYBOX_SUITE:-trixie} main" >"$work/sources.list"
  apt_opts=(-qq -o APT::Sandbox::User=root -o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work" -o "Dir::Cache::archives=$work/archives")
  if apt-get "${apt_opts[@]}" update && (cd "$work" && apt-get "${apt_opts[@]}" download busybox-static) \
    && dpkg-deb -x "$work"/busybox-static_*.deb "$work/root"; then
    install -m 0755 "$work/root/usr/bin/busybox" .venv/bin/busybox
  else
    echo "setup: could not fetch busybox-static from ${BUSYBOX_SUITE:-trixie}; pods use the system's" >&2
  fi
  rm -rf "$work"
fi
