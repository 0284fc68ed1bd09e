"""The `mlops step` contract every execution mode relies on: JSON result, result file, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import dataset_config


def mlops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True, text=True
    )


def test_step_prints_and_writes_its_result(store, tmp_path, flights_frame):
    path = tmp_path / "slice.parquet"
    flights_frame.iloc[::10].to_parquet(path)
    env = {**os.environ, "MLOPS_CONFIG": str(dataset_config(tmp_path, str(path)))}
    result_file = tmp_path / "return.json"
    context = {
        "dag_id": "training",
        "run_id": "cli-1",
        "interval_start": "2013-03-01",
        "interval_end": "2013-04-01",
    }
    proc = mlops(
        "step", "ingest", "--context", json.dumps(context), "--result-file", str(result_file), env=env
    )
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads(result_file.read_text())
    assert printed["rows"] > 5000 and len(printed["data_hash"]) == 64
    assert "/training/cli-1/ingest/snapshot.parquet" in printed["snapshot_uri"]


def test_bad_input_exits_3_with_a_named_error(store):
    proc = mlops("step", "ingest", "--param", "window_months=0", env=dict(os.environ))
    assert proc.returncode == 3
    assert "error: invalid pipeline config: ingest.window_months" in proc.stderr
    proc = mlops("step", "ingest", "--interval-end", "2015-06-01", env=dict(os.environ))
    assert proc.returncode == 3 and "lies outside the data of dataset 'flights'" in proc.stderr


def test_skipped_step_exits_99(store, tmp_path):
    inputs = {"evaluate": {"passed": False, "reason": "absolute: roc_auc 0.5 < 0.55"}, "train": {}}
    proc = mlops("step", "register", "--inputs", json.dumps(inputs), env=dict(os.environ))
    assert proc.returncode == 99
    assert json.loads(proc.stdout)["status"] == "skipped"
