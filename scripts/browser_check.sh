#!/usr/bin/env bash
# The browser tier: lora-ft ui driven in headless Chromium (tests/test_ui_browser.py). Chromium is Debian's
# (/usr/bin/chromium), installed here when missing and apt-get can; Playwright (in lora-ft[dev]) drives it.
#   bash scripts/browser_check.sh                          # install what is missing, then run the tier
#   LORA_FT_UI_SCREENSHOTS=docs/ui bash scripts/browser_check.sh   # also write each page's screenshot there
#   LORA_FT_SKIP_BROWSER=1 ...                             # skip it (CI and .ci/run honour this too)
# Exit 0 with a line saying so when Chromium cannot be had here (no apt-get, not root, no package index).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${LORA_FT_SKIP_BROWSER:-}" = "1" ]; then
  echo "browser tier skipped (LORA_FT_SKIP_BROWSER=1)"; exit 0
fi
started=$(date +%s)
chromium="${LORA_FT_CHROMIUM:-$(command -v chromium || true)}"
if [ -z "$chromium" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser tier"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; then
      echo "browser tier skipped: chromium could not be installed here (no package index?)"; exit 0
    fi
    chromium=$(command -v chromium)
  else
    echo "browser tier skipped: no chromium here (install it: apt-get install chromium; or set LORA_FT_CHROMIUM)"
    exit 0
  fi
fi
[ -x .venv/bin/python ] || bash scripts/setup.sh --dev
.venv/bin/python -c 'import gradio, playwright' 2>/dev/null || bash scripts/setup.sh --dev
echo "browser tier: $("$chromium" --version 2>/dev/null || echo "$chromium")"
LORA_FT_BROWSER=1 LORA_FT_CHROMIUM="$chromium" .venv/bin/python -m pytest -m browser tests/test_ui_browser.py -q \
  -p no:cacheprovider "$@"
echo "browser tier: $(( $(date +%s) - started )) s"
