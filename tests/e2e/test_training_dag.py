"""The training DAG through Airflow (dag.test) against a real MLflow server on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pendulum
import pytest

from conftest import dataset_config
from pipelines import storage

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "flights-delay"


@pytest.fixture(scope="module")
def env(mlflow_server, airflow_db, tmp_path_factory):
    """Tasks talk to the MLflow server; artifacts go to a fresh store."""
    home = tmp_path_factory.mktemp("e2e-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_HOME", str(home))
        mp.setenv("MLOPS_CONFIG", str(ROOT / "pipelines" / "datasets" / "flights.yaml"))
        yield mp


@pytest.fixture(scope="module")
def dag(env):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.get_dag("training")


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)


def run(dag, conf=None):
    run = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone), run_conf=conf)
    return run, {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def emitted_assets(run_id: str) -> list[str]:
    """Names of the assets a DAG run emitted events for, from Airflow's metadata database."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(AssetModel.name)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_run_id == run_id)
            .all()
        )
    return [name for (name,) in rows]


@pytest.fixture(scope="module")
def first_run(dag):
    return run(dag)


def test_training_run_registers_a_champion_with_lineage(first_run, client):
    dag_run, states = first_run
    assert str(dag_run.state) == "success"
    assert set(states.values()) == {"success"}, states

    model = client.get_registered_model(MODEL)
    assert model.aliases == {"champion": "1", "challenger": "1"} or model.aliases == {
        "champion": 1,
        "challenger": 1,
    }
    version = client.get_model_version(MODEL, "1")
    for tag in ("data_hash", "mlflow_run_id", "airflow.run_id", "code_version", "test.roc_auc", "threshold"):
        assert version.tags.get(tag), f"lineage tag {tag} missing"
    assert version.tags["airflow.run_id"] == dag_run.run_id
    assert version.tags["gate.passed"] == "true"
    assert float(version.tags["test.roc_auc"]) > 0.6

    run = client.get_run(version.run_id)
    assert run.data.tags["data_hash"] == version.tags["data_hash"]
    assert run.data.tags["airflow.dag_id"] == "training"
    assert run.data.metrics["test_roc_auc"] == pytest.approx(float(version.tags["test.roc_auc"]))
    logged = {a.path for a in client.list_artifacts(version.run_id, "validation")}
    logged |= {a.path for a in client.list_artifacts(version.run_id, "evaluation")}
    assert {"validation/validation.json", "validation/data_docs", "evaluation/comparison.html"} <= logged

    assert emitted_assets(dag_run.run_id) == [f"{MODEL}.challenger"]  # the deploy DAG's trigger

    evaluation = storage.read_json(version.tags["evaluation_uri"])
    assert evaluation["decision"]["passed"] and evaluation["champion"] is None
    assert {"carrier", "origin"} <= set(evaluation["slices"])
    html = Path(version.tags["evaluation_uri"]).with_name("comparison.html").read_text()
    assert "data:image/png;base64," in html and "PASSED" in html


def test_every_registered_version_carries_a_model_card_readable_in_mlflow(first_run, client, tmp_path):
    """The card is the version's description (MLflow's UI renders it) and artifacts of its run."""
    version = client.get_model_version(MODEL, "1")
    card_md = version.description
    for section in ("Intended use", "Training data", "Metrics", "Known limits"):
        assert section in card_md, f"model card lacks {section!r}"
    assert version.tags["data_hash"][:12] in card_md  # the data version it was trained on
    assert "tailnum" in card_md  # personal data declared, and not used as a feature
    assert version.tags["model_card"] == f"runs:/{version.run_id}/model_card"
    local = Path(client.download_artifacts(version.run_id, "model_card", str(tmp_path)))
    assert {p.name for p in local.iterdir()} == {"model_card.md", "model_card.html", "model_card.json"}
    card = json.loads((local / "model_card.json").read_text())
    assert card["training_data"]["data_hash"] == version.tags["data_hash"]
    assert card["fairness"]["columns"]["carrier"]["scored"] >= 5  # performance by carrier, reported
    assert card["gate"]["passed"] is True


def test_evaluation_reports_the_slice_gaps_by_carrier_and_origin(first_run, client):
    evaluation = storage.read_json(client.get_model_version(MODEL, "1").tags["evaluation_uri"])
    fairness = evaluation["fairness"]
    assert set(fairness["columns"]) == {"carrier", "origin"}
    carrier = fairness["columns"]["carrier"]
    scored = {
        value: row["roc_auc"]["candidate"]
        for value, row in evaluation["slices"]["carrier"].items()
        if value not in carrier["unscored"]
    }
    assert carrier["gap"] == pytest.approx(max(scored.values()) - min(scored.values()))
    assert carrier["passed"] == (carrier["gap"] <= fairness["max_gap"])


def test_audit_trail_says_who_triggered_what_and_what_was_decided(first_run, env):
    """``mlops audit`` (one command) lists the trigger, the gate's decision and the registration."""
    import os
    import subprocess
    import sys

    dag_run, _ = first_run
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "--model", MODEL, "--json"],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    )  # fmt: skip
    events = [json.loads(line) for line in out.stdout.splitlines()]
    mine = [e for e in events if e["run_key"] == f"training/{dag_run.run_id}"]
    assert [e["kind"] for e in mine] == ["run_triggered", "gate_decided", "version_registered"]
    trigger = mine[0]["trigger"]
    assert trigger["type"] == "manual" and trigger["by"] == "dag_test"  # dag.test's user
    assert mine[1]["details"]["decision"] == "passed"
    assert mine[2]["details"]["version"] == "1"
    table = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "--model", MODEL, "--kind", "version_registered"],
        capture_output=True, text=True, check=True, env=os.environ.copy(),
    ).stdout  # fmt: skip
    assert "version_registered" in table and "dag_test" in table and "gate_decided" not in table


def test_shuffled_labels_are_rejected_and_champion_stays(first_run, dag, client):
    dag_run, states = run(dag, {"shuffle_labels": True})
    assert str(dag_run.state) == "success"
    assert states["evaluate"] == "success" and states["register"] == "skipped"
    assert emitted_assets(dag_run.run_id) == []  # nothing to deploy
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    (rejected,) = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{dag_run.run_id}'",
    )
    assert rejected.data.tags["gate.passed"] == "false"
    assert rejected.data.metrics["champion_test_roc_auc"] > rejected.data.metrics["test_roc_auc"]


def _bad(kind, frame):
    frame = frame.copy()
    if kind == "missing column":
        return frame.drop(columns=["humid"]), "humid"
    if kind == "wrong type":
        frame["temp"] = "warm"
        return frame, "temp"
    frame.loc[frame.index[::7], "distance"] = -500
    return frame, "distance"


@pytest.mark.parametrize("kind", ["missing column", "wrong type", "out of range"])
def test_bad_data_stops_at_validate_and_registers_nothing(
    first_run, dag, client, env, tmp_path, flights_frame, kind
):
    bad, column = _bad(kind, flights_frame)
    path = tmp_path / "bad.parquet"
    bad.to_parquet(path)
    env.setenv("MLOPS_CONFIG", str(dataset_config(tmp_path, str(path))))
    try:
        dag_run, states = run(dag)
    finally:
        env.setenv("MLOPS_CONFIG", str(ROOT / "pipelines" / "datasets" / "flights.yaml"))
    assert str(dag_run.state) == "failed"
    assert states["ingest"] == "success" and states["validate"] == "failed"
    assert {states[t] for t in ("train", "evaluate", "register")} == {"upstream_failed"}
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    from pipelines.settings import Settings

    report = storage.read_json(
        storage.step_dir(Settings.from_env().artifact_root, "training", dag_run.run_id, "validate")
        + "/validation.json"
    )
    failed = [r for r in report["results"] if not r["success"]]
    assert failed and all(column in r["columns"] for r in failed)


def test_subprocess_mode_runs_each_step_as_mlops_step(first_run, client, env, mlflow_server):
    """The same DAG with MLOPS_EXECUTION_MODE=subprocess: every task runs `mlops step` in a child process.

    The registry's address comes from the Airflow connection ``mlflow_default`` only: the
    environment's own MLFLOW_TRACKING_URI points nowhere.
    """
    from airflow.dag_processing.dagbag import DagBag

    env.setenv("MLOPS_EXECUTION_MODE", "subprocess")
    try:
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["training"]
    finally:
        env.delenv("MLOPS_EXECUTION_MODE")
    assert dag.get_task("train").python_callable.__name__ == "run_step_in_subprocess"
    env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    env.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    env.setenv(
        "AIRFLOW_CONN_MLFLOW_DEFAULT",
        json.dumps({"conn_type": "http", "extra": {"tracking_uri": mlflow_server}}),
    )
    try:
        dag_run, states = run(dag, {"shuffle_labels": True})
    finally:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        env.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
        env.delenv("AIRFLOW_CONN_MLFLOW_DEFAULT")
    assert str(dag_run.state) == "success"
    assert states == {
        "ingest": "success",
        "validate": "success",
        "train": "success",
        "evaluate": "success",
        "register": "skipped",  # exit code 99 from `mlops step register`
    }
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1
    (logged,) = client.search_runs(
        [client.get_experiment_by_name(MODEL).experiment_id],
        filter_string=f"tags.`airflow.run_id` = '{dag_run.run_id}'",
    )  # the steps reached the server through the connection
    assert logged.data.tags["gate.passed"] == "false"
