# twspy — every target is a one-liner; `make help` lists them.
PYTHON ?= python3

.PHONY: help build test test-all cov lint bench compliance compliance-full fuzz clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

build: ## build the optional C accelerator (twspy/_speedups.c) in place
	$(PYTHON) setup.py -q build_ext --inplace

test: ## run the test suite, with the C accelerator built when a compiler exists (installs the test extra)
	@$(PYTHON) -c "import pytest, hypothesis, websockets, redis, fastapi, uvicorn" 2>/dev/null || $(PYTHON) -m pip install -q pytest hypothesis websockets redis fastapi uvicorn
	@if command -v "$$($(PYTHON) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null; then \
	  $(MAKE) -s build && export TWSPY_REQUIRE_SPEEDUPS=1; fi; $(PYTHON) -m pytest -q test

test-all: ## run the suite on every installed Python 3.9-3.13 (pyenv)
	@for v in 3.9 3.10 3.11 3.12 3.13; do \
	  py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python 2>/dev/null | tail -1); \
	  [ -n "$$py" ] || { echo "python $$v: not installed"; continue; }; \
	  echo "== $$py"; $(MAKE) -s test PYTHON=$$py || exit 1; done

cov: ## branch coverage of the protocol code
	$(PYTHON) -m pytest -q --cov=twspy --cov-branch --cov-report=term-missing test

lint: ## ruff and mypy, when installed
	-$(PYTHON) -m ruff check twspy test
	-$(PYTHON) -m mypy twspy

bench: ## benchmarks against peers and raw TCP (see bench/README.md)
	$(PYTHON) bench/run.py

compliance: ## Autobahn quick cases, both roles, threaded and asyncio (see compliance/README.md)
	$(PYTHON) compliance/run.py --quick
	$(PYTHON) compliance/run.py --quick --asyncio --no-setup

compliance-full: ## every Autobahn case, both roles, threaded and asyncio
	$(PYTHON) compliance/run.py
	$(PYTHON) compliance/run.py --asyncio --no-setup

fuzz: ## a bounded fuzzing campaign against a live server
	$(PYTHON) tools/fuzz.py

clean: ## remove caches and build output (the built accelerator too)
	rm -rf build dist *.egg-info .pytest_cache .hypothesis htmlcov .coverage twspy/_speedups.*.so twspy/_speedups.*.pyd
	find . -name __pycache__ -prune -exec rm -rf {} +
