"""`make up` / `make down`: Airflow standalone and the MLflow UI on the project's stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_up_serves_both_uis_with_the_training_dag_and_down_stops_them(tmp_path):
    airflow_port, mlflow_port, serving_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_AIRFLOW_PORT": str(airflow_port),
        "MLOPS_MLFLOW_PORT": str(mlflow_port),
        "MLOPS_SERVING_PORT": str(serving_port),
    }
    env.pop("MLFLOW_TRACKING_URI")
    stack = [sys.executable, "-m", "mlops_airflow.stack"]
    try:
        up = subprocess.run([*stack, "up"], env=env, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
        dags = get_json(f"http://127.0.0.1:{airflow_port}/api/v2/dags")  # no login on the local stack
        training = next(d for d in dags["dags"] if d["dag_id"] == "training")
        assert training["is_paused"] is False
        params = get_json(f"http://127.0.0.1:{airflow_port}/api/v2/dags/training/details")["params"]
        assert {"interval_end", "window_months", "estimator", "min_value", "max_drop"} <= set(params)
        experiments = get_json(
            f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=10"
        )
        assert "experiments" in experiments
        # the model server is up; not ready, since nothing has been trained in this home yet
        assert get_json(f"http://127.0.0.1:{serving_port}/health") == {"status": "ok"}
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            get_json(f"http://127.0.0.1:{serving_port}/ready")
        assert not_ready.value.code == 503
        deploy = next(d for d in get_json(f"http://127.0.0.1:{airflow_port}/api/v2/dags")["dags"]
                      if d["dag_id"] == "deploy")  # fmt: skip
        assert deploy["is_paused"] is False
        groups = [int(p.read_text()) for p in (tmp_path / "home" / "run").glob("*.pid")]
        assert len(groups) == 3
    finally:
        down = subprocess.run([*stack, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    assert all(f"stopped {name}" in down.stdout for name in ("airflow", "mlflow", "server"))
    for port in (airflow_port, mlflow_port, serving_port):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)
    for group in groups:  # every process of both groups is gone, scheduler workers included
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
