"""Shared fixtures: a private Airflow home, a real MLflow server, slices of the real flights data.

Airflow reads its configuration when first imported, so the environment is
set here, at collection time, before any test module imports it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from mlops_airflow.stack import mlflow_server_cmd, stack_env  # noqa: E402

SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlops-tests-"))
os.environ.update(stack_env(SESSION_HOME, ROOT))
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SESSION_HOME / 'mlflow.db'}"
DEFAULT_CONFIG = ROOT / "pipelines" / "datasets" / "flights.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata database (SQLite), migrated once per session."""
    subprocess.run(["airflow", "db", "migrate"], check=True, stdout=subprocess.DEVNULL)
    return Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` process on loopback with its own SQLite store."""
    home = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(home / "server.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            mlflow_server_cmd(home, port),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", 90)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    """A fresh embedded store per test: artifacts on disk, MLflow on SQLite."""
    home = tmp_path / "mlops"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.setenv("MLOPS_CONFIG", str(DEFAULT_CONFIG))
    return home


@pytest.fixture(scope="session")
def flights_frame():
    """The real flights of Jan-Mar 2013 with weather joined, as the bundled source reads them."""
    import pandas as pd

    from pipelines import sources
    from pipelines.config import load_config

    config = load_config(DEFAULT_CONFIG)
    return sources.read_window(
        config.dataset, pd.Timestamp("2013-01-01", tz="UTC"), pd.Timestamp("2013-04-01", tz="UTC")
    )


def dataset_config(tmp_path: Path, uri: str, **changes) -> Path:
    """A copy of the flights config pointing at another file (weather already joined)."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["dataset"]["source"] = {"kind": "file", "uri": uri}
    data["dataset"]["expectations"] = str(DEFAULT_CONFIG.parent / data["dataset"]["expectations"])
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
