# One virtual environment (.venv) with the pinned stack from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
export PYTHONPATH := $(CURDIR)/plugins

.PHONY: demo install test lint serve up down bench bench-serving clean

demo: install  ## Install everything, train Jan-Mar 2013 and score April through Airflow, print where to look
	$(PY) -m mlops_airflow.stack demo

install: $(STAMP)  ## Create .venv and install the pinned stack (about 2-3 minutes the first time)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@rm -f $(VENV)/.installed-* && touch $@

test: install lint  ## Lint, then the whole test suite (unit, DAG integrity, end-to-end, scheduler)
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

serve: install  ## Serve the demo's champion on http://127.0.0.1:8000 (follows the registry; Ctrl-C stops)
	$(PY) -m pipelines.cli serve --port $${MLOPS_SERVING_PORT:-8000}

up: install  ## Airflow UI :8080, MLflow UI :5000 and the model server :8000 over the demo's stores
	$(PY) -m mlops_airflow.stack up

down:
	$(PY) -m mlops_airflow.stack down

bench: install  ## Airflow vs plain-Python wall time of the training pipeline (benchmarks/README.md)
	$(PY) benchmarks/pipeline/run.py

bench-serving: install  ## This model server vs `mlflow models serve` (benchmarks/README.md)
	$(PY) benchmarks/serving/run.py

clean:
	rm -rf .mlops
