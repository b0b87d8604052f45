compare:
	bash scripts/setup.sh
	.venv/bin/margin-softmax compare --out runs/compare-$$(date +%Y%m%d-%H%M%S)

test:
	bash scripts/setup.sh
	.venv/bin/ruff check src tests benchmarks
	TRITON_INTERPRET=1 .venv/bin/python -m pytest -n 2 tests

# Every kernel and tuning candidate compiled for sm_80 and sm_90a with Triton's compiler and
# its ptxas, no GPU needed; fails on a compile error or spills above docs/kernel_spills.json.
kernels:
	bash scripts/setup.sh
	.venv/bin/python scripts/kernel_resources.py --check

.PHONY: compare kernels test
