# dicom-archive: `make test` sets up .venv and runs lint and the tests;
# `make run` starts the daemon on ./var (see README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv lint test test-fast soak bench bench-full run clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# An editable install compiles nothing, and PYTHONDONTWRITEBYTECODE=1 would then
	# recompile every module on every command (~60 ms a CLI run): do it once here.
	$(BIN)/python -m compileall -q dicom_archive
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check dicom_archive tests bench
	$(BIN)/ruff format --check dicom_archive tests bench
	$(BIN)/mypy --strict dicom_archive

test: lint
	$(BIN)/pytest -m "not slow" -p no:cacheprovider

test-fast: venv
	$(BIN)/pytest -m "not slow" -x -q --ignore=tests/integration

soak: venv
	$(BIN)/pytest -m slow -v

bench: venv
	$(BIN)/python -m bench --quick

bench-full: venv
	$(BIN)/python -m bench --full

run: venv
	$(BIN)/python -m dicom_archive.daemon.devrun

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
