#!/usr/bin/env bash
# The README's main job: install, then slice SmolLM2-135M-Instruct at 25% on the CPU with text that
# ships with Python, and print dense vs sliced perplexity, sizes and time.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec slicekit demo "$@"
