#!/usr/bin/env bash
# Verify lora-ft's GPU path on a machine with one CUDA GPU and no network (see scripts/gpu_check.py):
#   bash scripts/gpu_check.sh prepare                 # here, where pip works: .whl/ and .gpucheck/
#   bash scripts/gpu_check.sh run --wheels .whl       # there, on the GPU machine (carry .whl and .gpucheck)
# With no subcommand (or only flags) it runs `run`.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare|run|reference) ;;
  *) set -- run "$@" ;;
esac
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
