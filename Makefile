compare:
	bash scripts/setup.sh
	.venv/bin/margin-softmax compare --out runs/compare-$$(date +%Y%m%d-%H%M%S)

test:
	bash scripts/setup.sh
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/deptry src
	TRITON_INTERPRET=1 .venv/bin/python -m pytest -n 2 tests

# Every kernel and tuning candidate compiled for sm_80 and sm_90a with Triton's compiler and
# its ptxas, no GPU needed; fails on a compile error or spills above docs/kernel_spills.json.
kernels:
	bash scripts/setup.sh
	.venv/bin/python scripts/kernel_resources.py --check

# Mutation testing of the core modules, not part of CI (scripts/mutation.py): SAMPLE mutants
# per module (0: all), run against each module's tests; mutmut 3.8.1 supplies the mutants.
SAMPLE ?= 60
mutation:
	bash scripts/setup.sh
	.venv/bin/pip install -q mutmut==3.8.1
	nice -n 19 .venv/bin/python scripts/mutation.py --sample $(SAMPLE)

.PHONY: compare kernels mutation test
