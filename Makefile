# keyswarm -- developer entry points. `make help` lists them.
#
#   make setup   system packages (if missing), .venv, pip install -e '.[test]'
#   make demo    3 local nodes answering each other and a client, then stopped
#   make test    the pytest suite (no tests collected counts as a failure)
#   make bench   every bench/*.py script, then bench/results/summary.md
#   make clean   remove .venv, caches and bench results
#
# Variables: PYTHON=python3.12 (interpreter for a new venv), PYTEST_ARGS='-k x',
# BENCH_ARGS='--quick', VENV=.venv.

SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV        ?= .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTHON      ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

.PHONY: help setup demo test bench clean

help:
	@echo "make setup   install system packages if missing, create $(VENV), pip install -e '.[test]'"
	@echo "make demo    start 3 local nodes, show them answering each other and a client, stop them"
	@echo "make test    run the test suite (PYTEST_ARGS='...' passes options to pytest)"
	@echo "make bench   run every bench/*.py and write bench/results/summary.md (BENCH_ARGS=--quick)"
	@echo "make clean   remove $(VENV), caches and bench results"

setup: $(STAMP)
	@:

# The stamp is newer than its inputs once setup has succeeded: a second
# `make setup` is a no-op until pyproject.toml or the setup script changes.
$(STAMP): pyproject.toml scripts/setup.sh
	@PYTHON="$(PYTHON)" KEYSWARM_VENV="$(VENV)" bash scripts/setup.sh
	@touch $@

demo: setup
	$(VENV)/bin/keyswarm up --nodes 3 --demo

# pytest exits 5 when it collects no tests; make must fail then too.
test: setup
	@rc=0; $(VENV_PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests; counting that as a failure" >&2; fi; \
	exit $$rc

bench: setup
	$(VENV_PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist demo-data
	find . -path ./.git -prune -o -name '*.egg-info' -prune -exec rm -rf {} + -o \
	    -name __pycache__ -prune -exec rm -rf {} +
	rm -f bench/results/*.json bench/results/summary.md
