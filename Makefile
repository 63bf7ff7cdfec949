# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use with the CPU build of PyTorch 2.13.0.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where `covseg download` fetches from: $COVSEG_MIRROR, else the shared mirror beside this checkout when it
# exists, else the upstream repository.
MIRROR ?= $(or $(COVSEG_MIRROR),$(wildcard ../shared/data/covid-semiseg))
RUN ?= runs/demo
# Extra recipe overrides for the demo's training, e.g. `make demo ARGS="train.epochs=2"` for a quick look.
ARGS ?=
# `make test` runs the suite in TEST_WORKERS pytest-xdist processes of one torch thread each (CI has 2 cores; on them
# 1.56x faster than one process of two threads, session 74); `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,bench]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/covseg download $(if $(MIRROR),--mirror $(MIRROR))
	$(BIN)/covseg train --recipe default --task binary --split cv:0 -o $(RUN) --force $(ARGS)
	$(BIN)/covseg evaluate $(RUN)
	@echo "report: $(RUN)/eval-heldout/metrics.md  curves: $(RUN)/curves.png  figures: $(RUN)/eval-heldout/best_worst.png"

test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS)

clean:
	rm -rf $(VENV) runs
