#!/usr/bin/env bash
# The GPU checks in one go (at most 9.5 minutes: one 10-minute device call; usually less):
# the GPU benchmark of issue 3 (bfloat16, N=1024, D=512, C=1,000,000, forward + backward, CUDA events,
# peak allocated memory over the timed steps; both Triton schedules), a per-kernel profile,
# then the Triton tests compiled on CUDA and every test marked gpu (chunked on CUDA, the
# sharded head). Prints the table, the profile and the pytest summaries; exits non-zero if a
# step failed.
#
#   bash benchmarks/gpu.sh [OUT_DIR]         # from anywhere; results in OUT_DIR
#   PYTHON=python3 bash benchmarks/gpu.sh    # another interpreter (default: .venv, else python3)
#   GPU_SH_DRY_RUN=1 bash benchmarks/gpu.sh [OUT_DIR]  # no GPU: the same steps on the CPU at a
#       tiny size under TRITON_INTERPRET=1, the tests only collected (~40 s; checks the script)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-benchmarks/results-gpu}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ "${GPU_SH_DRY_RUN:-0}" = 1 ]; then
    DEVICE=cpu SIZE=8x16x40 REPEATS=1 COLLECT=--collect-only
    OUT_DIR=${1:-/tmp/gpu-sh-dry-run}  # never over the GPU results
    export TRITON_INTERPRET=1
else
    DEVICE=cuda SIZE=1024x512x1000000 REPEATS=20 COLLECT=
    unset TRITON_INTERPRET  # compiled kernels, not the CPU interpreter
    "$PY" -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" \
        || exit 1
fi

status=0
mkdir -p "$OUT_DIR"  # full logs go there too (the table, the autotuner's picks, the tests)
# the numbers first (they matter most if the device time runs out), then the tests
echo "== benchmark: bf16, $SIZE on $DEVICE (floor = three cuBLAS matmuls)"
timeout 270 "$PY" -m benchmarks --device $DEVICE --dtype bfloat16 \
    --sizes $SIZE --impls floor,auto,triton_fused,partial_fc,chunked,eager,insightface \
    --repeats $REPEATS --max-logits-gb 16 --timeout 150 --out "$OUT_DIR" 2>&1 \
    | tee "$OUT_DIR/benchmark.log" | grep -v "^  " || status=1

"$PY" - "$OUT_DIR/results.csv" <<'PYEOF' || status=1
import csv, sys  # which Triton schedule to keep (auto runs config.SCHEDULE, the GEMM one)
rows = {r["variant"]: r for r in csv.DictReader(open(sys.argv[1]))}
ms = {k: float(rows[v]["median_s"]) * 1e3 for k, v in (("gemm", "auto"), ("fused", "triton_fused"))
      if rows.get(v, {}).get("median_s")}
print("== schedules (ms):", ms, "-> keep", min(ms, key=ms.get) if ms else "none measured")
PYEOF

echo "== profile: where the Triton step (GEMM schedule) spends its time; the tuned configs"
TRITON_PRINT_AUTOTUNING=1 timeout 60 "$PY" -m benchmarks.gpu_profile --device $DEVICE --size $SIZE \
    > "$OUT_DIR/profile.log" 2>&1 || status=1
# Triton's own picks (one line, or four in newer Triton) stay in the log; gpu_profile prints
# every kernel's pick as "tuned ...", also those Triton read from its disk cache
grep -v -i -E "autotuning|^with key as|^finished after|best config|^tuned " \
    "$OUT_DIR/profile.log" | tail -20
grep "^tuned " "$OUT_DIR/profile.log" | cut -c1-240

echo "== tests: Triton kernels on CUDA (both schedules, 3 tuning candidates), then gpu-marked"
MARGIN_SOFTMAX_QUICK_TUNE=1 timeout 150 "$PY" -m pytest -q -p no:warnings -p no:cacheprovider \
    $COLLECT tests/test_triton.py tests/test_triton_property.py 2>&1 \
    | tee "$OUT_DIR/tests-triton.log" | tail -25 || status=1
MARGIN_SOFTMAX_QUICK_TUNE=1 timeout 90 "$PY" -m pytest -q -p no:warnings -p no:cacheprovider \
    $COLLECT -m gpu --continue-on-collection-errors tests 2>&1 \
    | tee "$OUT_DIR/tests-gpu.log" | tail -25 || status=1
exit $status
