compare:
	bash scripts/setup.sh
	.venv/bin/python examples/train_head.py

test:
	bash scripts/setup.sh
	.venv/bin/ruff check src tests benchmarks examples
	TRITON_INTERPRET=1 .venv/bin/python -m pytest -n 2 tests

.PHONY: compare test
