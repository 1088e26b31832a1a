# The two commands:  `make demo` (set up, then run the whole pipeline on the demo profile)
#                    `make test` (set up, then run the test suite)
# PINAS_WHEELS: a folder of prebuilt wheels (the mmcv build for torch 2.13.0), used when present.
PINAS_WHEELS ?= $(wildcard ../shared/wheels/torch-2.13.0-cpu-cp311)
export PINAS_WHEELS
VENV ?= .venv

.PHONY: setup demo test bench lint
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/pinas-pipeline run $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done
