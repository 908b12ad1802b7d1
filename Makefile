# ple-platform developer verbs. Everything runs inside .venv (created with uv; torch pinned to the CPU wheel).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export PLE_DATA_DIR ?= $(CURDIR)/data
UV_FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

.PHONY: setup demo ui test test-fast bench clean

$(VENV)/.installed: pyproject.toml
	@command -v uv >/dev/null || python3 -m pip install -q uv
	@test -d $(VENV) || uv venv -q -p 3.11 $(VENV)
	uv pip install -q -p $(PY) $(UV_FIND_LINKS) -e '.[test]'
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install the project with its test extras

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

# The demo's promotion policy (production keeps the strict defaults): the panel is small, so fairness groups under
# 50 customers and tasks without positives in a month are accepted as "insufficient evidence"; and acquisition
# propensity differs by age and gender in the synthetic bank, so the four-fifths floor on who is targeted cannot
# hold — the demo gates on "no fairness regression vs the champion" and the compliance report shows the floor.
DEMO_POLICY := {"allow_insufficient_fairness": true, "allow_unevaluable_tasks": true, "fairness_mode": "no_regression"}

demo: setup $(DAGSTER_HOME)/dagster.yaml  ## generate demo data and materialize the pipeline for every month
	PLE_PROMOTION_POLICY='$(DEMO_POLICY)' $(VENV)/bin/ple-platform demo

ui: export PLE_PROMOTION_POLICY ?= $(DEMO_POLICY)

ui: setup $(DAGSTER_HOME)/dagster.yaml  ## Dagster UI on http://127.0.0.1:3000
	$(VENV)/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

test: setup  ## the whole test suite (what CI runs)
	$(VENV)/bin/pytest -q

test-fast: setup  ## unit tests only: deselects `slow` (servers, processes, the materialized pipeline, training)
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup  ## benchmarks (results are recorded in docs/benchmarks.md)
	$(PY) benchmarks/bench_raw.py

clean:
	rm -rf $(DAGSTER_HOME) data
