"""The embedded MLflow store (SQLite, no server) when several processes open it first at once.

Two models' first tasks under LocalExecutor, or two ``mlops run`` in two terminals, each create
the store: MLflow migrates a new database in every process that finds it empty, and the
migrations collide ("Online migration expected to match one row", "table already exists").
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

OPEN = """
import sys
from pipelines import tracking
from pipelines.settings import Settings

settings = Settings.from_env({"MLOPS_HOME": sys.argv[1], "MLFLOW_TRACKING_URI": sys.argv[2]})
client = tracking.client(settings)
client.search_experiments()
client.search_registered_models()
"""


@pytest.mark.parametrize("trial", [1, 2])
def test_three_processes_creating_the_embedded_store_at_once_all_succeed(tmp_path, trial):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN, str(tmp_path), uri],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [(p.communicate(timeout=180)[1], p.returncode) for p in procs]
    failed = [err.strip().splitlines()[-1] for err, code in errors if code != 0]
    assert not failed, failed
