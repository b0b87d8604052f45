#!/usr/bin/env bash
# Create .venv and install margin-softmax with its test tools. Safe to run again.
# TORCH_SPEC picks the torch build (default: the pinned 2.13.0, which on this project's
# machines is a CPU wheel already on disk; on a GPU machine PyPI serves the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi
