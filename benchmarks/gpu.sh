#!/usr/bin/env bash
# The GPU checks in one go (a few minutes on one GPU): the Triton tests compiled on CUDA, every
# test marked gpu (chunked on CUDA, the sharded head), then the GPU benchmark of issue 3:
# bfloat16, N=1024, D=512, C=1,000,000, forward + backward, CUDA events, peak allocated memory.
# Prints the pytest summaries and the benchmark table; exits non-zero if a test failed.
#
#   bash benchmarks/gpu.sh                 # from the repository root, or anywhere
#   PYTHON=python3 bash benchmarks/gpu.sh  # another interpreter (default: .venv, else python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels, not the CPU interpreter
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())" || exit 1

status=0
echo "== tests: Triton kernels on CUDA, then every gpu-marked test"
"$PY" -m pytest -q -p no:warnings tests/test_triton.py || status=1
"$PY" -m pytest -q -p no:warnings -m gpu --continue-on-collection-errors tests || status=1

echo "== benchmark: bf16, 1024 x 512 x 1,000,000 (floor = three cuBLAS matmuls)"
"$PY" -m benchmarks --device cuda --dtype bfloat16 --sizes 1024x512x1000000 \
    --impls floor,auto,chunked,eager,insightface,linear_ce --repeats 20 \
    --max-logits-gb 16 --timeout 300 --out benchmarks/results-gpu || status=1
exit $status
