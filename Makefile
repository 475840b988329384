# `make demo` and `make test` set up .venv by themselves on a fresh clone, then are fast.
VENV ?= .venv
BIN := $(VENV)/bin
READY := $(VENV)/.medseg-ready

.PHONY: setup demo test lint

$(READY): pyproject.toml constraints.txt
	test -x $(BIN)/python || python3 -m venv $(VENV)
	# torch first, pinned: any later unpinned request would pull a CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

setup: $(READY)

demo: $(READY)
	bash scripts/demo.sh

lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest
