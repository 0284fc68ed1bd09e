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


def test_models_lists_the_catalogue_and_fails_on_a_config_that_does_not_load(tmp_path):
    import shutil

    from conftest import model_catalogue

    folder = model_catalogue(tmp_path / "models")
    env = {**os.environ, "MLOPS_CONFIG_DIR": str(folder)}
    listed = mlops("models", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["car-loan", "flights-delay"]
    assert "<dag>__car_loan" in listed.stdout
    shutil.copy(folder / "flights.yaml", folder / "flights_copy.yaml")  # a second file for one model
    broken = mlops("models", env=env)
    assert broken.returncode == 3
    assert "flights_copy.yaml: registry.model_name 'flights-delay' is already the model of" in broken.stdout


def test_model_option_runs_a_command_with_that_models_config(store, tmp_path):
    from conftest import model_catalogue

    env = {**os.environ, "MLOPS_CONFIG_DIR": str(model_catalogue(tmp_path / "models"))}
    env.pop("MLOPS_CONFIG")  # the store fixture names flights: --model must win over nothing else
    suite = tmp_path / "suite.yaml"
    args = ("suggest-expectations", "--interval-end", "2019-02-01", "--output", str(suite))
    proc = mlops("--model", "car-loan", *args, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "car_value" in suite.read_text() and "dep_delay" not in suite.read_text()  # car loans' columns
    unknown = mlops("--model", "churn", *args, env=env)
    assert unknown.returncode == 3
    assert "no model 'churn' in the catalogue (MLOPS_CONFIG_DIR); its models: car-loan, flights-delay" in (
        unknown.stderr
    )
