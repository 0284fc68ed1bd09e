"""The monitoring DAG through Airflow (``dag.test``) on batch windows of the real data, and
stateful retraining through the plain runner, both against the real MLflow server."""

from __future__ import annotations

import contextlib
import json

import pendulum
import pytest

from conftest import SERVING_MODEL, reset_deployment
from pipelines import monitoring, storage, tracking

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def dag(serving_dagbag):
    return serving_dagbag.dags["monitoring"]


def _events(run) -> list[dict]:
    """The retrain asset events this run emitted, read from Airflow's database."""
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.query(AssetEvent).filter(AssetEvent.source_run_id == run.run_id).all()
        return [{"asset": e.asset.name, "extra": dict(e.extra or {})} for e in events]


def _clear_request(settings) -> None:
    with contextlib.suppress(Exception):  # not set
        tracking.client(settings).delete_registered_model_tag(SERVING_MODEL, monitoring.RETRAIN_TAG)
    with contextlib.suppress(Exception):
        tracking.client(settings).delete_model_version_tag(SERVING_MODEL, "1", monitoring.BASELINE_TAG)


def test_a_summer_batch_drifts_and_emits_one_retrain_event(dag, serving_home):
    settings = serving_home["settings"]
    reset_deployment(settings, champion="1")  # trained on Jan-Mar
    _clear_request(settings)
    conf = {"source": "batch", "interval_end": "2013-08-01"}  # July, scored by the champion
    run = dag.test(logical_date=pendulum.datetime(2013, 8, 1, tz=dag.timezone), run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"detect_drift": "success", "decide_retrain": "success"}, states
    found = run.get_task_instance("detect_drift").xcom_pull(task_ids="detect_drift")
    assert found["window"]["source"] == "batch" and found["window"]["start"].startswith("2013-07-01")
    assert found["drift"]["status"] == "drift" and "temp" in found["drift"]["drifted_features"]
    assert found["rows"]["labelled"] > 25_000  # the batch carries its outcomes
    assert found["label_drift"] in {"ok", "drift"} and found["prediction_drift"] in {"ok", "drift"}
    assert found["performance"]["status"] in {"ok", "decay"} and 0.5 < found["performance"]["live"] < 0.9
    # judged by what the model uses, with the estimate before labels next to the realised value
    assert found["drift"]["weighting"] == "importance" and found["drift"]["weighted_share"] >= 0.3
    assert 0.5 < found["estimated"]["roc_auc"] < 0.9 and abs(found["estimated"]["error"]) < 0.1
    assert any(line.startswith("importance-weighted drift") for line in found["explanation"])
    # v1's first window (it answered all of it) is now its baseline, on its model version
    tags = tracking.client(settings).get_model_version(SERVING_MODEL, "1").tags
    assert json.loads(tags[monitoring.BASELINE_TAG])["value"] == found["performance"]["live"]
    report = storage.read_json(found["report_uri"])
    temp = next(f for f in report["features"] if f["column"] == "temp")
    assert (temp["method"], temp["threshold"], temp["drifted"]) == ("wasserstein", 0.1, True)
    assert temp["statistics"]["ks"] < 0.01 and temp["statistics"]["psi"] > 0.2  # every statistic is there
    assert "data:image/png;base64," in storage.read_bytes(found["html_uri"]).decode()

    (event,) = _events(run)
    assert event["asset"] == f"{SERVING_MODEL}.retrain"
    assert event["extra"]["interval_end"].startswith("2013-08-01")
    assert (
        "temp" in event["extra"]["drifted_features"] and event["extra"]["report_uri"] == found["report_uri"]
    )
    tags = tracking.client(settings).get_registered_model(SERVING_MODEL).tags
    assert monitoring.last_request(tags)["champion_version"] == "1"

    # The same episode again (same champion, inside the cooldown): no second event.
    again = dag.test(logical_date=pendulum.datetime(2013, 8, 2, tz=dag.timezone), run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in again.get_task_instances()}
    assert states == {"detect_drift": "success", "decide_retrain": "skipped"}, states
    assert _events(again) == []
    _clear_request(settings)


def test_a_window_without_traffic_is_insufficient_data_not_an_alarm(dag, serving_home):
    settings = serving_home["settings"]
    reset_deployment(settings, champion="1")
    _clear_request(settings)
    # the prediction log has no traffic about October 2013: nothing to judge, nothing to emit
    run = dag.test(
        logical_date=pendulum.datetime(2013, 11, 1, tz=dag.timezone), run_conf={"interval_end": "2013-11-01"}
    )
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {"detect_drift": "success", "decide_retrain": "skipped"}, states
    found = run.get_task_instance("detect_drift").xcom_pull(task_ids="detect_drift")
    assert found["drift"]["status"] == "insufficient_data" and found["drift"]["share"] is None
    assert found["performance"]["status"] == "insufficient_data"
    assert _events(run) == []


def test_stateful_retraining_continues_the_champion_and_says_so(serving_home):
    """training.mode=stateful: the champion's model continued on the new window, recorded on the run."""
    import mlflow

    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import run_pipeline

    settings = serving_home["settings"]
    reset_deployment(settings, champion="1")
    ctx = StepContext.create(
        dag_id="training",
        run_id="stateful-1",
        interval_start=None,
        interval_end="2013-06-01",
        overrides={"training_mode": "stateful"},
        settings=settings,
    )
    results = run_pipeline(TRAINING, ctx)
    trained = results["train"]
    assert trained["training_mode"] == {"mode": "stateful", "from_version": "1"}
    run = tracking.client(settings).get_run(trained["mlflow_run_id"])
    assert run.data.params["training_mode"] == "stateful"
    assert run.data.tags["training.warm_start_from"] == "1"
    champion = mlflow.sklearn.load_model(f"models:/{SERVING_MODEL}/1").named_steps["model"]
    continued = mlflow.sklearn.load_model(trained["model_uri"]).named_steps["model"]
    assert continued.n_iter_ > champion.n_iter_  # the champion's trees plus new ones
    # a stateful model still goes through the gate like any other, and the version says how it was made
    assert results["evaluate"]["passed"], results["evaluate"]["reason"]
    version = tracking.client(settings).get_model_version(SERVING_MODEL, results["register"]["version"])
    assert version.tags["training.mode"] == "stateful"
    reset_deployment(settings)
