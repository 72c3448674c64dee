# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRAS ?= test,docs
PYTEST_ARGS ?= -n 2 --dist worksteal -m "not slow" --durations=20

.PHONY: demo test test-all lint docs tutorials bench-quick clean

comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Re-install only when the project's own files change.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e .
	touch $@

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/pdegen demo

# The suite includes tests/test_docs.py, which builds the documentation site in strict mode,
# runs the doctests and looks at the built pages in headless Chromium.
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: lint
	$(PY) -m pytest -n 2

# The lint gate (code, tests, benchmarks and notebooks): part of `make test`, hence of CI.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The documentation site, built in strict mode (a broken cross-reference, a docstring that does
# not parse or a page that fails to build is an error) into site/: open site/index.html.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# Re-run every tutorial in full (PDEGEN_FAST unset) and store its outputs in the notebook.
tutorials: $(STAMP)
	$(PY) -m pip install -q -e ".[test,notebooks]"
	$(PY) tutorials/run_all.py

bench-quick: $(VENV)/.installed
	$(PY) benchmarks/fem.py --quick

clean:
	rm -rf $(VENV) out build dist site *.egg-info
