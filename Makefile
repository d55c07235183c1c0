# The quick start: `make demo` (install + main job on the embedded stack), `make test` (install + tests).
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test up down clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed-run
	$(BIN)/python -m pip install --quiet -e '.[dev,train]'
	touch $@

demo: $(VENV)/.installed-run
	$(BIN)/popscore demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

up: $(VENV)/.installed-run
	$(BIN)/popscore up

down:
	$(BIN)/popscore down

clean:
	rm -rf $(VENV) .popscore
