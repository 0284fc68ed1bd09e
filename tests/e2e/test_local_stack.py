"""`make up` / `make down`: Airflow standalone and the MLflow UI on the project's stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    airflow_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "MLOPS_HOME": str(tmp_path / "home"),
        "MLOPS_AIRFLOW_PORT": str(airflow_port),
        "MLOPS_MLFLOW_PORT": str(mlflow_port),
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
        groups = [int(p.read_text()) for p in (tmp_path / "home" / "run").glob("*.pid")]
        assert len(groups) == 2
    finally:
        down = subprocess.run([*stack, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0
    assert "stopped airflow" in down.stdout and "stopped mlflow" in down.stdout
    for port in (airflow_port, mlflow_port):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)
    for group in groups:  # every process of both groups is gone, scheduler workers included
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
