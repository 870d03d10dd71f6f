#!/usr/bin/env bash
# The test command: the whole suite on the CPU (GPU-only tests skip cleanly without CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
export TRITON_INTERPRET=${TRITON_INTERPRET:-$(python3 -c "import torch; print(0 if torch.cuda.is_available() else 1)")}
exec python3 -m pytest -q -ra --durations=15 tests "$@"
