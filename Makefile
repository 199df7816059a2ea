# Two commands do all set-up on a fresh machine:
#   make run    create .venv, install, serve the bundled models at http://127.0.0.1:8000
#   make test   create .venv, install test dependencies (pip, npm, Debian chromium), run pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint bench install install-test system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The stamp files re-run pip only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[train]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed

node_modules/.package-lock.json: package-lock.json
	npm ci --no-audit --no-fund --silent

install: $(VENV)/.installed node_modules/.package-lock.json

install-test: $(VENV)/.installed-test node_modules/.package-lock.json system-deps

system-deps:
	./scripts/system-deps.sh

run: install
	$(BIN)/latentz serve --host $(HOST) --port $(PORT)

# ruff's rules include the size and complexity limits (C90, PLR0912, PLR0915; see pyproject.toml);
# lint-imports checks the import contracts there (the torch-free receive path, the layered training side).
test: install-test
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/lint-imports --no-cache

# Every benchmark in bench/ (bench/run_all.py --list); BENCH_ARGS=--quick for small versions,
# e.g. make bench BENCH_ARGS="--only load,serving". nginx (for `serving`) is optional: apt-get install nginx.
bench: install-test
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache
