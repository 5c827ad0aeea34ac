# One command for the main job (`make demo`), one for the tests (`make test`).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,openai,llamacpp,embeddings

.PHONY: demo test lint services install clean

# The virtual environment, rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed

services:
	./scripts/services.sh

# The whole flow on this machine, no services needed: SQLite, in-process broker and worker, SmolLM2.
demo: install
	$(BIN)/tagger demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: install services lint
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
