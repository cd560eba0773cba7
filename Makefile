# Two entry points, both self-installing into .venv:  make demo  |  make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install install-test install-airflow demo test bench bench-sandbox bench-extract bench-limits bench-reverse bench-exits sandbox clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# Airflow 3 lives in its own venv (importable Airflow slows every dlt config lookup); the scheduler
# test (tests/ops/test_airflow_scheduler.py) runs Airflow from it, with a PostgreSQL metadata
# database, for which Airflow 3 also needs the async driver asyncpg.
AIRFLOW_VENV := .venv-airflow
$(AIRFLOW_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q -e ".[airflow]" "asyncpg>=0.29"
	touch $@
install-airflow: $(AIRFLOW_VENV)/.installed

demo: install
	$(BIN)/klaviyo-dlt demo

test: install-test install-airflow
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# Benchmarks (not tests): each prints a table and writes JSON under bench/results/.
bench: bench-sandbox bench-extract bench-limits bench-reverse
bench-sandbox: install
	$(BIN)/python bench/sandbox_page_bench.py
bench-extract: install
	$(BIN)/python bench/extract_bench.py --mode cpu --profiles 400000 --events 1000000
bench-limits: install
	$(BIN)/python bench/extract_bench.py --mode limits --profiles 200000 --events 1000000
bench-reverse: install
	$(BIN)/python bench/reverse_sync_bench.py
# not part of `bench`: 30 demos and 30 syncs under a CPU load (about half an hour)
bench-exits: install
	$(BIN)/python bench/clean_exit_bench.py

sandbox: install
	$(BIN)/klaviyo-dlt sandbox

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .pytest_cache *.duckdb bench/results
