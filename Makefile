# Every target sets up the project-local virtual environment first; a second run
# reinstalls only when pyproject.toml or requirements.lock changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup serve test test-fast bench-quick clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ssl-serve --models-dir models --data-dir var

test: $(STAMP)
	$(PY) -m pytest -q -m "not bench"

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not bench"

bench-quick: $(STAMP)
	$(PY) -m pytest -q -m bench tests/test_bench_quick.py

clean:
	rm -rf $(VENV) build *.egg-info
