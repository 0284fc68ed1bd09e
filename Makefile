# One virtual environment (.venv) with the pinned stack from pyproject.toml.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)
# the demo tooling (mlops_demo) runs from the checkout; pipelines and mlops_airflow are installed
export PYTHONPATH := $(CURDIR)
# `make test` runs pytest on this many xdist workers (tests/conftest.py says what each takes); 0: serial
TEST_WORKERS ?= 2
# A Docker-compatible engine for `make images` and the container tests: DOCKER_HOST if set, else the
# machine's Docker socket, else podman's Docker API, set up by the workspace's container-engine tool
# (no Docker daemon on this kind of machine).
ENGINE_TOOL := $(wildcard $(CURDIR)/../shared/tools/container-engine)
ifeq ($(DOCKER_HOST)$(wildcard /var/run/docker.sock),)
ifneq ($(ENGINE_TOOL),)
export DOCKER_HOST := unix:///run/podman/podman.sock
endif
endif

help:  ## This list: each target and what it does
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-z][a-z0-9-]*:.*## / {printf "  make %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: help demo train-demo test-fast install monitoring-tools browser nannyml container-engine lock images k8s-smoke test lint serve up down bench bench-serving wrk bench-drift bench-policy clean

demo: install  ## The closed loop: train on Jan-Mar 2013, replay Apr-Dec through the scheduler, print the table
	$(PY) -m mlops_demo.loop --fresh

train-demo: install  ## Quicker: train Jan-Mar 2013 and score April with dag.test(), print where to look
	$(PY) -m mlops_demo.stack demo

install: $(STAMP)  ## Create .venv with the pinned stack (no root needed)

# Prometheus and Alertmanager are Debian's packages: installed when missing (as root, as in CI).
monitoring-tools:
	@if ! command -v prometheus >/dev/null || ! command -v prometheus-alertmanager >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's prometheus and prometheus-alertmanager ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      prometheus prometheus-alertmanager >/dev/null; \
	  else \
	    echo "monitoring-tools: prometheus or prometheus-alertmanager is missing and this is not root:" \
	      "tests/e2e/test_alerting.py will skip (in CI it fails). Install them with" \
	      "'sudo apt-get install prometheus prometheus-alertmanager'." >&2; \
	  fi; \
	fi

# Debian's Chromium for the Airflow UI tests (Playwright drives it; it downloads no browser).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      chromium >/dev/null; \
	  else \
	    echo "missing: run 'sudo apt-get install chromium' (the UI tests skip without it)" >&2; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[airflow,dev]"
	# setuptools leaves a second copy of the package's metadata in the checkout; with the checkout on
	# PYTHONPATH (the demo tooling), Airflow then finds the plugin's entry point twice and shows
	# "Plugin 'mlops' already registered" as a plugin import error. The installed copy is the one.
	rm -rf mlops_airflow.egg-info
	# the second example dataset (pipelines/datasets/car_loan.yaml) ships inside NannyML's wheel:
	# the wheel alone, for its data files (its dependencies would pull 2 GB into the pinned stack)
	$(PY) -m pip install --quiet --no-deps nannyml==0.13.1
	@rm -f $(VENV)/.installed-* && touch $@

# NannyML in a virtualenv of its own (its xgboost, lightgbm and NCCL wheels weigh 2 GB and have no
# place in the pinned stack): the test that checks our CBPE estimate against NannyML's runs it.
NANNYML := .venv-nannyml/.installed-nannyml-0.13.1
nannyml: $(NANNYML)
$(NANNYML):
	@test -x .venv-nannyml/bin/python || $(PYTHON) -m venv .venv-nannyml
	.venv-nannyml/bin/python -m pip install --quiet nannyml==0.13.1 statsmodels==0.14.6  # nannyml imports statsmodels without declaring it
	@touch $@

# podman's Docker API (needs root: it installs Debian's podman), when this machine has no engine.
# A clone without the workspace's tool (a user's) skips it; the container tests then skip.
container-engine:
ifneq ($(ENGINE_TOOL),)
	@if [ "$(DOCKER_HOST)" = unix:///run/podman/podman.sock ]; then $(ENGINE_TOOL); fi
endif

lock: install  ## Re-lock the images' dependencies with hashes after a pyproject.toml change
	$(PY) containers/lock.py

images: install container-engine  ## Build the step and serving images through the Docker API
	$(PY) containers/build.py

k8s-smoke:  ## On a real cluster (current kube context): install the chart, helm test, the training DAG once as pods
	.ci/k8s-smoke

test: install lint container-engine browser nannyml monitoring-tools  ## Lint, then the whole test suite (unit, DAG integrity, containers, helm, end-to-end, scheduler, the UI in a browser)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope

test-fast: install nannyml  ## Only the quick tests (unit, DAG integrity, data, model; a few minutes): the loop of a change
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope tests/unit tests/dags tests/data tests/model

lint: install  ## ruff, the layering contracts (import-linter) and the type check of pipelines/ (mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

serve: install  ## Serve the demo's champion on http://127.0.0.1:8000 (follows the registry; Ctrl-C stops)
	$(PY) -m pipelines.cli serve --port $${MLOPS_SERVING_PORT:-8000}

up: install  ## Airflow UI :8080, MLflow UI :5000 and the model server :8000 over the demo's stores
	$(PY) -m mlops_demo.stack up

down:  ## Stop what `make up` started
	$(PY) -m mlops_demo.stack down

bench: install  ## Airflow vs plain-Python wall time of the training pipeline (benchmarks/README.md)
	$(PY) benchmarks/pipeline/run.py

# wrk (Debian's), the load tool that is not ours in the serving benchmark.
wrk:
	@if ! command -v wrk >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's wrk ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      wrk >/dev/null; \
	  else \
	    echo "missing: run 'sudo apt-get install wrk' (the benchmark skips its wrk run without it)" >&2; \
	  fi; \
	fi

bench-serving: install wrk  ## This model server vs `mlflow models serve`, with our client and wrk (benchmarks/README.md)
	$(PY) benchmarks/serving/run.py

bench-policy: install  ## The retraining-policy backtest on flights and on the car loans (about 4 min)
	$(PY) benchmarks/policy/run.py

bench-drift: install  ## This project's drift statistics vs Evidently's DataDriftPreset (benchmarks/README.md)
	$(PY) benchmarks/drift/run.py

clean:  ## Remove the demo's stores (.mlops); the virtualenvs stay
	rm -rf .mlops
