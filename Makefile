# Quick start: `make demo` runs the example app, `make test` runs the whole suite.
# Both create .venv with the machine's python3 and install the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint type check bench screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	cd examples && ../$(BIN)/python -m shop.demo
	cd examples/djangoshop && ../../$(BIN)/python -m djangoshop.demo

# The suite runs in $(TEST_WORKERS) pytest-xdist processes: most of its time is spent waiting on
# real workers and servers, not on the CPU. Modules that share a server resource stay in one
# process (tests/conftest.py). `make test TEST_WORKERS=0` runs it in this process.
TEST_WORKERS ?= 3

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check unified_jobs tests examples bench
	$(BIN)/ruff format --check unified_jobs

type: $(STAMP)
	$(BIN)/mypy

check: lint type test

bench: $(STAMP)
	$(BIN)/pip install -q -r bench/requirements-peers.txt
	$(BIN)/python -m bench

# The dashboard's screenshots in docs/images, from its browser test (Postgres kind).
screenshots: $(STAMP)
	UJ_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/browser -k Postgres -q

clean:
	rm -rf $(VENV) build *.egg-info
