# twspy — every target is a one-liner; `make help` lists them.
PYTHON ?= python3

.PHONY: help build dev test test-all cov lint docs bench compliance compliance-full fuzz clean

help:
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

build: ## build the optional C accelerator (twspy/_speedups.c) in place
	$(PYTHON) setup.py -q build_ext --inplace

test: ## run the test suite, with the C accelerator built when a compiler exists (installs the test extra)
	@$(PYTHON) -c "import pytest, hypothesis, websockets, redis, mypy, fastapi, uvicorn" 2>/dev/null || $(PYTHON) -m pip install -q pytest hypothesis websockets redis mypy fastapi uvicorn
	@if ! $(PYTHON) -c "import setuptools" 2>/dev/null; then \
	  echo "make test: no setuptools for $(PYTHON): the C accelerator is not built, the pure-Python code is tested"; \
	elif command -v "$$($(PYTHON) -c 'import sysconfig; print((sysconfig.get_config_var("CC") or "cc").split()[0])')" >/dev/null; then \
	  $(MAKE) -s build && export TWSPY_REQUIRE_SPEEDUPS=1; fi; $(PYTHON) -m pytest -q test

test-all: ## run the suite on every installed Python 3.9-3.13 (pyenv)
	@for v in 3.9 3.10 3.11 3.12 3.13; do \
	  py=$$(ls -d $$HOME/.pyenv/versions/$$v.*/bin/python 2>/dev/null | tail -1); \
	  [ -n "$$py" ] || { echo "python $$v: not installed"; continue; }; \
	  echo "== $$py"; $(MAKE) -s test PYTHON=$$py || exit 1; done

dev: ## install twspy editable, in the mode type checkers can follow (mypy sees it)
	$(PYTHON) -m pip install -e . --config-settings editable_mode=strict

cov: ## branch coverage, subprocesses included: fails below 95 % for the package, below 100 % for the sans-I/O core
	$(PYTHON) -m coverage erase
	$(PYTHON) -m coverage run -m pytest -q test
	$(PYTHON) -m coverage combine -q
	$(PYTHON) -m coverage report
	$(PYTHON) -m coverage report --fail-under=100 --include='twspy/protocol.py,twspy/handshake_protocol.py'

lint: ## ruff, mypy --strict and the private-names check; fails on any finding
	$(PYTHON) -m ruff check twspy test examples bench compliance interop tools docs setup.py
	$(PYTHON) -m mypy
	$(PYTHON) tools/check_private.py

docs: ## the documentation site with Sphinx, warnings as errors, in docs/_build/html (installs sphinx, myst-parser)
	@$(PYTHON) -c "import sphinx, myst_parser" 2>/dev/null || $(PYTHON) -m pip install -q sphinx myst-parser
	$(PYTHON) -m sphinx -W --keep-going -E -q -b html docs docs/_build/html

bench: ## benchmarks against peers and raw TCP, then 9,000 idle asyncio connections (see bench/README.md)
	$(PYTHON) bench/run.py
	$(PYTHON) bench/asyncio_scale.py --conns 9000

compliance: ## Autobahn quick cases, both roles, threaded and asyncio (see compliance/README.md)
	$(PYTHON) compliance/run.py --quick
	$(PYTHON) compliance/run.py --quick --asyncio --no-setup

compliance-full: ## every Autobahn case, both roles, threaded and asyncio
	$(PYTHON) compliance/run.py
	$(PYTHON) compliance/run.py --asyncio --no-setup

fuzz: ## a bounded fuzzing campaign against a live server
	$(PYTHON) tools/fuzz.py

clean: ## remove caches and build output (the built accelerator too)
	rm -rf build dist docs/_build *.egg-info .pytest_cache .hypothesis htmlcov .coverage twspy/_speedups.*.so twspy/_speedups.*.pyd
	find . -name __pycache__ -prune -exec rm -rf {} +
