# brewcast: the README's commands. `make test` works on a fresh clone: it builds .venv itself.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
VENV := .venv
BIN := $(VENV)/bin
export BREWCAST_HOME ?= $(CURDIR)/.brewcast

.PHONY: setup browser wrk test test-fast lint docs demo bench stop clean

setup: $(VENV)/.synced

# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on these machines)
# every process would otherwise compile its imports from source (Airflow 6.8 s -> 2.4 s).
$(VENV)/.synced: pyproject.toml uv.lock Makefile
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# Installs Debian package $(1) (as root, when its command is missing), else prints $(2).
define debian_tool
	@command -v $(1) >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends $(1) >/dev/null; \
	  else echo "$(2)"; fi; }
endef

# Headless Chromium for the screenshot test (Debian's package; as root on these machines).
browser:
	$(call debian_tool,chromium,Chromium missing: install it (Debian: apt-get install chromium) for the screenshot test)

test: lint docs browser  ## lint, the docs site (strict), then everything, slow end-to-end tests included
	$(BIN)/pytest

test-fast: setup  ## skip the slow end-to-end tests
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# The documentation site (MkDocs + Material) into site/, offline; strict: any warning (a
# broken link or anchor, a page missing from the nav, a reference that fails) fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: setup  ## MLflow + Airflow + BentoML up, a simulated year through them, monitoring
	$(BIN)/brewcast demo

# wrk, the serving benchmark's closed-loop load generator (C: it leaves the shared cores to
# the servers being measured); without it the benchmark falls back to Python's httpx.
wrk:
	$(call debian_tool,wrk,wrk missing (Debian: apt-get install wrk): the benchmark uses httpx instead)

bench: setup wrk browser
	$(BIN)/python -m benchmarks

stop:  ## stop what `make demo` started (by pid)
	@if [ -x $(BIN)/brewcast ]; then $(BIN)/brewcast stop; else echo "nothing to stop"; fi

clean:
	rm -rf $(VENV) .brewcast .pytest_cache .ruff_cache site
