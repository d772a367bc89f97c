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

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check unified_jobs tests examples bench
	$(BIN)/ruff format --check unified_jobs

type: $(STAMP)
	$(BIN)/mypy

check: lint type test

bench: $(STAMP)
	$(BIN)/python -m bench

# The dashboard's screenshots in docs/images, from its browser test (Postgres kind).
screenshots: $(STAMP)
	UJ_SCREENSHOTS=docs/images $(BIN)/python -m pytest tests/browser -k Postgres -q

clean:
	rm -rf $(VENV) build *.egg-info
