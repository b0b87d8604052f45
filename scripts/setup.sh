#!/usr/bin/env bash
# Create .venv and install margin-softmax with the command line and the test tools. Safe to
# run again. TORCH_SPEC picks the torch build (default: the pinned 2.13.0, which on this
# project's machines is a CPU wheel already on disk). Elsewhere PyPI's torch for Linux x86-64
# is the CUDA build, about 5.8 GB with its nvidia-* packages, GPU or not; without a GPU set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build (about 0.75 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "$TORCH_SPEC"
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q -e ".[cli,test]"
  touch "$stamp"
fi
