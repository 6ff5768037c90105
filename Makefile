# brewcast: the README's commands. `make test` works on a fresh clone: it builds .venv itself.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
VENV := .venv
BIN := $(VENV)/bin
export BREWCAST_HOME ?= $(CURDIR)/.brewcast

.PHONY: setup test test-fast lint demo bench stop clean

setup: $(VENV)/.synced

$(VENV)/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

test: lint  ## lint, then everything, slow end-to-end tests included
	$(BIN)/pytest

test-fast: setup  ## skip the slow end-to-end tests
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: setup
	@echo "brewcast demo: not yet (the demo issue wires Airflow, MLflow and BentoML); for now it"
	@echo "simulates a cellar, validates it, builds snapshots and trains + registers a model"
	$(BIN)/brewcast simulate --to lake
	$(BIN)/brewcast validate || true  # the simulator's bad records are quarantined: exit 1
	$(BIN)/brewcast features
	$(BIN)/brewcast train --quiet

bench: setup
	$(BIN)/python -m benchmarks

stop:
	@echo "nothing started yet"

clean:
	rm -rf $(VENV) .brewcast .pytest_cache .ruff_cache
