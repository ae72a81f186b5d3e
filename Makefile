# Two entry points (see README): `make demo` runs the end-to-end demo, `make test` the whole suite.
# Each creates/updates .venv itself. torch is installed as exactly torch==2.13.0 (the CPU wheel on
# local disk); any other spec would pull a multi-GB CUDA build.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint docs bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]' 'ray[data]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/quickstart.py

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mkdocs build --strict --site-dir .site
	# the layers of docs/architecture.md ([tool.importlinter] in pyproject.toml)
	PYTHONPATH=src $(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples
	PYTHONPATH=src $(VENV)/bin/lint-imports

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir .site

clean:
	rm -rf $(VENV) .site build src/*.egg-info

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done
