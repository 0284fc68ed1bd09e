"""An inferred expectation suite: `mlops suggest-expectations` as typed, and validate without a suite."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pandas as pd
import yaml

from conftest import dataset_config
from pipelines import storage, validation
from pipelines.config import load_config
from pipelines.context import StepContext
from pipelines.runner import execute_step


def _slice(tmp_path, flights_frame, **changes):
    path = tmp_path / "slice.parquet"
    flights_frame.iloc[::4].to_parquet(path)
    return dataset_config(tmp_path, str(path), **{"schedule.end_date": "2013-04-01", **changes})


def _mlops(*args: str, config) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLOPS_CONFIG": str(config)}
    command = [sys.executable, "-m", "pipelines.cli", "suggest-expectations", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_suggest_expectations_writes_a_suite_that_passes_its_data_and_catches_broken_data(
    store, tmp_path, flights_frame
):
    config = _slice(tmp_path, flights_frame)
    suite = tmp_path / "mine.expectations.yaml"
    proc = _mlops("--param", "window_months=1", "--output", str(suite), config=config)
    assert proc.returncode == 0, proc.stderr
    assert f"to {suite}" in proc.stdout and "rows in [2013-03-01, 2013-04-01)" in proc.stdout
    text = suite.read_text()
    assert text.startswith("# Expectation suite for flights, inferred by `mlops suggest-expectations`")
    spec = yaml.safe_load(text)["expectations"]
    kinds = {(e["type"], e["kwargs"].get("column")) for e in spec}
    assert ("expect_column_values_to_be_in_set", "origin") in kinds  # value sets
    assert ("expect_column_values_to_be_between", "humid") in kinds  # ranges
    assert ("expect_column_values_to_not_be_null", "carrier") in kinds  # null fractions
    assert ("expect_column_values_to_be_in_type_list", "late") in kinds  # types
    (unique,) = [e for e in spec if e["type"] == "expect_compound_columns_to_be_unique"]
    assert unique["kwargs"]["column_list"] == ["carrier", "flight", "origin", "time_hour"]  # the key
    humid = next(
        e
        for e in spec
        if e["type"] == "expect_column_values_to_be_between" and e["kwargs"]["column"] == "humid"
    )
    assert humid["kwargs"]["min_value"] >= 0 and humid["kwargs"]["max_value"] <= 110  # a margin, not a wall

    march = flights_frame.iloc[::4]
    march = march[(march["time_hour"] >= pd.Timestamp("2013-03-01 05:00", tz="UTC"))]
    march = march[march["time_hour"] < pd.Timestamp("2013-04-01 04:00", tz="UTC")].dropna(
        subset=["arr_delay"]
    )
    snapshot = march.assign(late=march["arr_delay"] > 15)
    docs = str(tmp_path / "docs")
    assert validation.validate_frame(snapshot, spec, "flights", docs)["success"]
    broken = snapshot.assign(humid=snapshot["humid"] * 100)  # a fraction became a percentage twice
    report = validation.validate_frame(broken, spec, "flights", docs)
    failed = [validation.describe_failure(r) for r in report["results"] if not r["success"]]
    assert failed and all("humid" in line for line in failed)

    again = _mlops("--param", "window_months=1", "--output", str(suite), config=config)
    assert again.returncode == 3 and "exists: pass --force" in again.stderr  # an edited suite is kept
    assert suite.read_text() == text


def test_without_a_suite_validate_infers_one_and_says_so(store, tmp_path, flights_frame, monkeypatch, caplog):
    config = _slice(tmp_path, flights_frame, **{"dataset.expectations": None})
    monkeypatch.setenv("MLOPS_CONFIG", str(config))
    assert load_config(config).dataset.expectations is None
    ctx = StepContext.create(dag_id="training", run_id="no-suite", interval_end="2013-04-01")
    with caplog.at_level(logging.WARNING, logger="pipelines.steps.validate"):
        result = execute_step("validate", ctx, {"ingest": execute_step("ingest", ctx, {})})
    assert result["passed"] and result["expectations"] > 40
    assert "names no expectation suite" in caplog.text and "mlops suggest-expectations" in caplog.text
    inferred = yaml.safe_load(storage.read_bytes(result["inferred_suite_uri"]))
    assert inferred["name"] == "flights" and len(inferred["expectations"]) > 40
