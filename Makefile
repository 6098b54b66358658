# The two commands a newcomer needs (see README):  make serve   and   make test
# Both set up a virtual environment in .venv first (idempotent).

PYTHON ?= python3
VENV   ?= .venv
# torch is installed first and pinned: on a CUDA machine PyPI's build is the CUDA one; override e.g. TORCH="torch==2.14.1"
TORCH  ?= torch==2.13.0
ARGS   ?=

BIN := $(VENV)/bin

.PHONY: setup serve test clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[test]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(BIN)/ltxserve serve $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
