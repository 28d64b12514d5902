#!/usr/bin/env bash
# Installs the Debian packages SwiftBalancer builds and tests with. Idempotent: only what is missing
# is installed. Every dependency of the build is listed here, so a fresh Debian 12 machine needs
# nothing else. `install-deps.sh fuzz` also installs clang and libFuzzer for `make fuzz`;
# `install-deps.sh perf` valgrind for scripts/count-instructions.sh.
set -euo pipefail
packages=(
  build-essential cmake make pkg-config
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenmpi-dev openmpi-bin libopenblas-dev
  pybind11-dev python3-dev python3-numpy python3-pytest python3-torch
)
if [[ "${1:-}" == "fuzz" ]]; then
  packages+=(clang-14 libclang-rt-14-dev)
fi
if [[ "${1:-}" == "perf" ]]; then
  packages+=(valgrind)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# Through env: sudo's env_reset drops exported variables, and tzdata (pulled in) would prompt.
APT=($SUDO env DEBIAN_FRONTEND=noninteractive)
# A run interrupted during unpacking leaves dpkg half-done; apt-get refuses until it is finished.
"${APT[@]}" dpkg --configure -a
"${APT[@]}" apt-get update -q
"${APT[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
