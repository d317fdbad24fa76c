# Two commands for a fresh machine:  `make run`  and  `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.loupe-installed
FOLDER ?=

.PHONY: run test lint clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

## Open the app (on a demo folder it generates the first time, unless FOLDER=... is given).
run: $(STAMP)
	$(PY) main.py $(FOLDER)

## Run the whole suite offscreen, TEST_JOBS tests at a time (pytest-xdist; TEST_JOBS=0: one process).
TEST_JOBS ?= 2
test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -ra -n $(TEST_JOBS) $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
