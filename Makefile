# The two commands a newcomer needs (see README):  make serve   and   make test
# Both set up a virtual environment in .venv first (idempotent).

PYTHON ?= python3
VENV   ?= .venv
# torch is pinned in constraints.txt, the one pin the image (Dockerfile.cuda) uses too. On Linux x86_64 PyPI's build
# is the CUDA one, so the same command sets up a GPU machine; override with e.g. CONSTRAINTS=my-constraints.txt.
CONSTRAINTS ?= constraints.txt
ARGS   ?=

BIN := $(VENV)/bin

.PHONY: setup serve test clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -c $(CONSTRAINTS) torch
	$(BIN)/pip install -c $(CONSTRAINTS) -e ".[test]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(BIN)/ltxserve serve $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

clean-venv:
	rm -rf $(VENV)
