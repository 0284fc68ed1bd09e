"""The training DAG in ``docker`` mode: every step in its own container of the step image.

The containers share the MLflow server (host network) and the artifact store (bind-mounted at
the same path); the DAG file is the same one the other modes run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pendulum
import pytest
import yaml

from conftest import DEFAULT_CONFIG

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MODEL = "flights-docker"
STEPS = {"ingest", "validate", "train", "evaluate", "register"}


@pytest.fixture(scope="module")
def docker_dag(mlflow_server, airflow_db, images, tmp_path_factory):
    """The training DAG parsed in docker mode, with its own model name and store."""
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path_factory.mktemp("docker-mode")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config["registry"] = {"model_name": MODEL, "experiment": MODEL}
    (home / "config").mkdir()  # a user's config folder: the config and its suite, mounted into each step
    suite = DEFAULT_CONFIG.parent / config["dataset"]["expectations"]
    (home / "config" / suite.name).write_text(suite.read_text())
    (home / "config" / "flights-docker.yaml").write_text(yaml.safe_dump(config))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_EXECUTION_MODE", "docker")
        mp.setenv("MLOPS_STEP_IMAGE", images["step"]["tag"])
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_HOME", str(home))
        mp.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
        mp.setenv("MLOPS_CONFIG", str(home / "config" / "flights-docker.yaml"))  # outside the image
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield bag.get_dag("training"), home


def created_containers(client, since: float, run_id: str) -> list[str]:
    """Steps of ``run_id`` whose containers the engine created, from its event stream."""
    events = client.events(
        since=int(since),
        until=int(time.time()) + 1,
        decode=True,
        filters={"event": "create", "type": "container"},
    )
    steps = []
    for event in events:
        labels = event.get("Actor", {}).get("Attributes", {})
        if labels.get("mlops.run_id") == run_id:
            steps.append(labels["mlops.step"])
    return steps


def test_training_dag_runs_every_step_in_its_own_container(docker_dag, docker_client, mlflow_server):
    from mlflow import MlflowClient

    dag, home = docker_dag
    assert {t.task_id: t.python_callable.__name__ for t in dag.tasks} == dict.fromkeys(
        STEPS, "run_step_in_container"
    )
    started = time.time()
    run = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}

    steps = created_containers(docker_client, started, run.run_id)
    assert sorted(steps) == sorted(STEPS)  # one container per step, none reused, none retried
    leftovers = docker_client.containers.list(all=True, filters={"label": f"mlops.run_id={run.run_id}"})
    assert leftovers == []  # every container removed after its step

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.tags["airflow.run_id"] == run.run_id
    mlflow_run = client.get_run(version.run_id)
    assert mlflow_run.data.metrics["test_roc_auc"] > 0.6
    # written by the containers into the shared store, read back on the host
    assert len(list((home / "artifacts" / "training").glob("*/ingest/snapshot.parquet"))) == 1
    assert Path(version.tags["evaluation_uri"]).is_file()


def test_bad_input_in_a_container_fails_at_once_without_retry(docker_dag):
    dag, _ = docker_dag
    run = dag.test(
        logical_date=pendulum.datetime(2013, 5, 1, tz=dag.timezone),
        run_conf={"interval_end": "2016-01-01"},  # the data ends in 2013: nothing to train on
    )
    ingest = run.get_task_instance("ingest")
    assert str(ingest.state) == "failed"  # not up_for_retry: exit code 3 means a retry cannot help
    assert ingest.try_number == 1
