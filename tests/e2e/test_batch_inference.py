"""The batch-inference DAG through Airflow: read an interval, validate it, score it with the champion."""

from __future__ import annotations

from pathlib import Path

import pendulum
import pytest

from conftest import SERVING_MODEL, reset_deployment
from pipelines import storage

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag(serving_dagbag):
    return serving_dagbag.dags["batch_inference"]


def test_batch_dag_scores_a_month_with_the_champion(dag, serving_home, caplog):
    reset_deployment(serving_home["settings"], champion="2")
    caplog.set_level("INFO", logger="pipelines.steps.score")
    # a run at June 1 scores the interval that ends there: May 2013, New York time
    run = dag.test(logical_date=pendulum.datetime(2013, 6, 1, tz=dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"ingest_batch": "success", "validate": "success", "score": "success"}, states
    result = run.get_task_instance("score").xcom_pull(task_ids="score")
    assert result["model_name"] == SERVING_MODEL and result["model_version"] == "2"
    out = storage.read_parquet(result["predictions_uri"])
    assert len(out) == result["rows"] > 25_000  # every May flight, cancelled ones too
    assert set(out["model_version"]) == {"2"}
    assert out["probability"].between(0, 1).all()
    assert (out["prediction"] == (out["probability"] >= out["threshold"])).all()
    assert out["time_hour"].min() >= pendulum.datetime(2013, 5, 1, tz="America/New_York")
    assert out["time_hour"].max() < pendulum.datetime(2013, 6, 1, tz="America/New_York")
    assert "late" not in out.columns and "arr_delay" not in out.columns
    assert any("scored" in r.getMessage() and "%" in r.getMessage() for r in caplog.records)
    reset_deployment(serving_home["settings"])


def test_batch_dag_stops_at_validation_on_bad_rows(dag, serving_home, tmp_path):
    """A batch that breaks the suite is not scored: validate fails and names the problem."""
    import pandas as pd
    import yaml

    from pipelines import sources
    from pipelines.config import load_config

    config = load_config(serving_home["config"])
    frame = sources.read_window(
        config.dataset, pd.Timestamp("2013-05-01", tz="UTC"), pd.Timestamp("2013-06-01", tz="UTC")
    )
    frame.loc[frame.index[:2000], "origin"] = "XXX"
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    data = yaml.safe_load(Path(serving_home["config"]).read_text())
    data["dataset"]["source"] = {"kind": "file", "uri": str(path)}
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text(yaml.safe_dump(data))
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**serving_home["env"], "MLOPS_CONFIG": str(bad_config)}.items():
            mp.setenv(key, value)
        bad_dag = DagBag(dag_folder=str(ROOT / "dags")).dags["batch_inference"]
        run = bad_dag.test(logical_date=pendulum.datetime(2013, 5, 1, tz=bad_dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states["validate"] == "failed" and states["score"] in {"upstream_failed", "None"}, states
