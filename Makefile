# Two commands set everything up: `make demo` and `make test`.
# Each (re)builds .venv only when pyproject.toml changed (a stamp keyed on its content).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
export AWS_EC2_METADATA_DISABLED := true
export DVC_NO_ANALYTICS := 1
# llama-cpp-python compiles llama.cpp once (about 6 min on 2 cores); pip caches the wheel.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	@# a venv whose creation was interrupted has no pip: make it again rather than fail forever
	@$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/ggufops demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check tools tests testing bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

bench: $(STAMP)
	@for b in bench/bench_*.py; do m=$$(basename $$b .py); echo "== $$m"; $(BIN)/python -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) .ggufops .mypy_cache .ruff_cache .pytest_cache
