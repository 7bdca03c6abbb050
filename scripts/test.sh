#!/usr/bin/env bash
# Runs the whole test suite (unit, multi-rank MPI, PyTorch reference) on the build made by
# scripts/setup.sh. Usage: scripts/test.sh [ctest arguments, e.g. -R tokenizer]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[[ -x "$ROOT/build/trident" ]] || { echo "test: no build/trident; run scripts/setup.sh first" >&2; exit 1; }
# Re-build in case sources changed since set-up (no-op otherwise).
ninja -C "$ROOT/build" >/dev/null
exec ctest --test-dir "$ROOT/build" --output-on-failure -j2 "$@"
