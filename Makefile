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

# mypy reads the package under its import names through links (see pyproject's [tool.mypy]).
TYPED := .mypy_cache/medseg-tree

lint: $(READY)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf $(TYPED) && mkdir -p $(TYPED)/medseg
	ln -s $(CURDIR)/medseg/*.py $(CURDIR)/medseg/py.typed $(TYPED)/medseg/
	for folder in datasets transforms networks pipelines; do \
		ln -s $(CURDIR)/$$folder $(TYPED)/medseg/$$folder; done
	$(BIN)/mypy -p medseg

test: lint
	$(BIN)/pytest
