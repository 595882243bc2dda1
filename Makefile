# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test bench lint fmt clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch pinned here: the CPU build from the local wheel, never the multi-GB CUDA wheels
	$(PIP) install torch==2.13.0 2>&1 | sed '/is ignored/d'
	$(PIP) install -e '.[dev,diffusers,images,compression]' 2>&1 | sed '/is ignored/d'
	$(BIN)/python -c "import torch, vaekit; assert torch.__version__.startswith('2.13.0')"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/vaekit demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

fmt: $(STAMP)
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) runs bench/results .pytest_cache .ruff_cache
