# One virtual environment in .venv; every target works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

.PHONY: venv postgres test lint demo ui docs bench clean

$(BIN)/clickstream: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/clickstream

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

# PostgreSQL 15 for the `postgres` tests (Dagster's instance storage); idempotent, needs root.
postgres:
	bash deploy/postgres-setup.sh

test: venv postgres
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	cd dbt_project && ../$(BIN)/sqlfluff lint models

demo: venv $(DAGSTER_HOME)/dagster.yaml
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/clickstream demo

ui: venv $(DAGSTER_HOME)/dagster.yaml
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dagster dev -w workspace.yaml

docs: venv
	cd dbt_project && PATH=$(CURDIR)/$(BIN):$$PATH ../$(BIN)/dbt docs generate --profiles-dir . && ../$(BIN)/dbt docs serve --profiles-dir . --port 8081

bench: venv
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/collector_bench.py

clean:
	rm -rf data .dagster_home dbt_project/target
