# Two commands for a fresh machine (see README.md):
#   make demo   - set up .venv, condense the embedded digits with DDM and DM, compare with random
#   make test   - set up .venv, run the test suite (the command CI runs)
#   make docs   - add the docs extra to .venv, build the documentation site (mkdocs --strict)
# TORCH pins the CPU build this project is developed with; override for GPUs, e.g.
#   make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
STAMP := $(VENV)/.installed

DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ddm demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(VENV)/bin/pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/speed.py

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info
