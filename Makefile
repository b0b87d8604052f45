compare:
	bash scripts/setup.sh
	.venv/bin/margin-softmax compare --out runs/compare-$$(date +%Y%m%d-%H%M%S)

test:
	bash scripts/setup.sh
	.venv/bin/ruff check src tests benchmarks
	TRITON_INTERPRET=1 .venv/bin/python -m pytest -n 2 tests

.PHONY: compare test
