#!/usr/bin/env bash
# Verify lora-ft's GPU path on a machine with one CUDA GPU and no network (see scripts/gpu_check.py):
#   bash scripts/gpu_check.sh --wheels .whl          # after `python scripts/gpu_check.py prepare` where pip works
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py run "$@"
