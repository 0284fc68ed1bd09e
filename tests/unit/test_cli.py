"""The `mlops step` contract every execution mode relies on: JSON result, result file, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

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


def test_the_interval_end_defaults_to_where_the_configs_data_ends(store, tmp_path, flights_frame):
    """No flights date in code: without --interval-end a run ends at schedule.end_date, or now."""
    path = tmp_path / "slice.parquet"
    flights_frame.iloc[::10].to_parquet(path)

    def ingest(end_date: str | None) -> subprocess.CompletedProcess:
        config = dataset_config(tmp_path, str(path), **{"schedule.end_date": end_date})
        return mlops(
            "step", "ingest", "--param", "window_months=1", env={**os.environ, "MLOPS_CONFIG": str(config)}
        )

    proc = ingest("2013-04-01")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["window"]["end"] == "2013-04-01T04:00:00+00:00"  # local midnight in New York
    proc = ingest(None)  # live data: the month up to now, where this slice has no rows
    this_month = date.today().strftime("%Y-%m")
    assert proc.returncode == 3 and "no rows in the source between" in proc.stderr, proc.stderr
    assert f"and {this_month}" in proc.stderr, proc.stderr
