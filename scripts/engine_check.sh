#!/usr/bin/env bash
# The engine tier: every export proven in the engine that serves it (vLLM's CPU build and llama.cpp), each in its
# own environment outside .venv, built once by scripts/engine_envs.sh. Servers listen on 127.0.0.1 only, each
# with a start-up timeout, and are stopped by process group. Figures land in .engines/work/figures-*.json.
#   bash scripts/engine_check.sh            # build what is missing, then run the tier
#   LORA_FT_SKIP_ENGINES=1 ...              # skip it (CI and .ci/run honour this too)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_FT_SKIP_ENGINES:-}" = "1" ]; then
  echo "engine tier skipped (LORA_FT_SKIP_ENGINES=1)"; exit 0
fi
started=$(date +%s)
bash scripts/engine_envs.sh all
built=$(date +%s)
echo "engine environments ready in $((built - started)) s"
LORA_FT_ENGINES=1 .venv/bin/python -m pytest -m engines tests/engines -q -p no:cacheprovider "$@"
echo "engine tier: $(( $(date +%s) - built )) s of tests, $(( $(date +%s) - started )) s in all"
