"""A second dataset, from nothing but its config: train, gate, register, serve and monitor.

``pipelines/datasets/car_loan.yaml`` as it ships: NannyML's synthetic car loans (a wheel that
``make install`` installs for its data), with a schema that shares nothing with flights (an
integer id, a timestamp with milliseconds in UTC, a float label joined from a second file, a
boolean and two text categoricals). Every command is the CLI as a user types it, against the
real MLflow server; car values shift from April 2019, which monitoring must see. The training and
the monitoring of the shift are the lines of docs/your-data.md's walkthrough, run as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pandas as pd
import pytest

from conftest import ServerProcess, run_line, walkthrough
from pipelines import modeling
from pipelines.config import load_config

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "pipelines" / "datasets" / "car_loan.yaml"


@pytest.fixture(scope="module")
def car_loan(mlflow_server, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("car-loan")
    return {
        "MLOPS_CONFIG": str(CONFIG),
        "MLOPS_HOME": str(home),
        "MLOPS_ARTIFACT_ROOT": str(home / "artifacts"),
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLOPS_PREDICTION_LOG": "",
    }


def mlops(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results(proc.stdout)


def results(stdout: str) -> dict:
    """The JSON results ``mlops run`` prints after its progress lines."""
    return json.loads(stdout[stdout.index("{\n") :])


def test_car_loans_train_register_serve_and_their_drift_is_seen(car_loan, tmp_path):
    from mlflow import MlflowClient

    train_line, monitor_line = walkthrough("your-data.md", "car-loan")  # as the docs give them
    assert "MLOPS_CONFIG=pipelines/datasets/car_loan.yaml" in train_line
    documented = {k: v for k, v in car_loan.items() if k != "MLOPS_CONFIG"}  # the line sets it
    trained = results(run_line(train_line, ROOT, documented))
    assert trained["ingest"]["window"] == {
        "start": "2018-11-01T00:00:00+00:00",
        "end": "2019-02-01T00:00:00+00:00",
    }
    assert trained["evaluate"]["passed"] is True and trained["evaluate"]["metrics"]["roc_auc"] > 0.9
    assert trained["register"]["registered"] and trained["register"]["version"] == "1"
    uri = car_loan["MLFLOW_TRACKING_URI"]  # the registry too: an earlier test may have set another globally
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("car-loan", "champion")
    assert version.version == "1" and version.tags["data.window_end"].startswith("2019-02-01")

    source = pd.read_csv(
        Path(sys.prefix)
        / "lib/python3.11/site-packages/nannyml/datasets/data/synthetic_car_loan_analysis.csv"
    )
    # categoricals travel as strings, as the OpenAPI schema says: the boolean column is "True"/"False"
    dataset = load_config(CONFIG).dataset
    inputs = modeling.model_input(source.head(5), dataset)
    records = json.loads(inputs.to_json(orient="records"))
    assert records[0]["repaid_loan_on_prev_car"] in {"True", "False"}
    server = ServerProcess(car_loan, tmp_path / "server.log").start().wait_ready()
    try:
        response = httpx.post(f"{server.url}/predict", json={"records": records}, timeout=30)
        answer = response.json()
        assert response.status_code == 200, answer
    finally:
        server.stop()
    assert answer["model_version"] == "1" and len(answer["predictions"]) == 5
    assert all(0.0 <= p["probability"] <= 1.0 for p in answer["predictions"])

    calm = mlops(car_loan, "run", "monitoring", "--interval-end", "2019-02-01", "--param", "source=batch")
    shifted = results(run_line(monitor_line, ROOT, documented))
    assert "car_value" not in calm["detect_drift"]["drift"]["drifted_features"]
    assert "car_value" in shifted["detect_drift"]["drift"]["drifted_features"]  # the April shift
    assert shifted["detect_drift"]["rows"]["window"] > 4_000
