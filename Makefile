# blobfs developer commands. `make demo` and `make test` set the machine up themselves.
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python

.DEFAULT_GOAL := help
.PHONY: help setup demo test lint fmt typecheck bench check clean distclean

help:
	@echo "make setup      system packages (as root), .venv, /usr/local/bin/blobfs link"
	@echo "make demo       run the demo (blobfs.cli.demo) on the bundled sample tree"
	@echo "make test       run the test suite (pytest)"
	@echo "make lint       ruff check, ruff format --check, import-linter contracts"
	@echo "make fmt        ruff format + ruff check --fix"
	@echo "make typecheck  mypy --strict over blobfs and tests"
	@echo "make bench      benchmarks (tests/bench.py)"
	@echo "make check      lint + typecheck + test"
	@echo "make clean      remove caches and build output (keeps .venv)"
	@echo "make distclean  clean, and remove .venv"

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m blobfs.cli.demo

test: setup
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: setup
	$(BIN)/mypy

bench: setup
	$(PY) -m tests.bench

check: lint typecheck test

clean:
	rm -rf build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache .grimp_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
