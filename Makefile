# saeexp: the two commands of the README are `make demo` and `make test`; both set up a fresh machine.
PY ?= python3
# CPU machines keep the torch 2.13.0 CPU wheel (an unpinned torch would pull gigabytes of CUDA packages);
# where nvidia-smi exists, plain pip resolves the CUDA build.
CONSTRAINT := $(if $(shell command -v nvidia-smi 2>/dev/null),,-c constraints/cpu.txt)
PYTEST_ARGS ?=

.PHONY: install check demo test bench bench-sweep

install:
	$(PY) -m pip install -q $(CONSTRAINT) -e '.[lm,dev]'
	PYTHON=$(PY) bash scripts/setup-lm.sh
	bash scripts/setup-browser.sh

demo: install
	bash scripts/demo.sh

# the static checks: ruff, the layer contracts (lint-imports), mypy; `make test` runs them first
check:
	bash scripts/check.sh

test: install
	bash scripts/check.sh
	bash scripts/test.sh $(PYTEST_ARGS)

bench: install
	$(PY) bench/speed/bench_core.py
	$(PY) bench/speed/bench_variants.py
	$(PY) bench/speed/bench_ortho.py
	$(PY) bench/speed/bench_harvest.py

bench-sweep: install   # about 20 minutes: four two-minute jobs, serially on the local SLURM cluster
	$(PY) bench/speed/bench_sweep.py --tokens 4000000
