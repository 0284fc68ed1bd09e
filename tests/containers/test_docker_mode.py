"""The training DAG in ``docker`` mode: every step in its own container of the step image.

The containers share the MLflow server (host network) and the artifact store (bind-mounted at
the same path); the DAG file is the same one the other modes run.
"""

from __future__ import annotations

import threading
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


class ContainerWatch:
    """Containers of one DAG run seen through the engine while the run goes, by id and step label.

    Polls the engine's container list (a step's container lives for seconds). The engine's event
    stream said the same, but podman 4.3's file event log loses events once it rotates at 1 MB,
    which a whole CI run's builds and containers reach: the stream then came back empty.
    """

    def __init__(self, client, interval: float = 0.2):
        self.client, self.interval = client, interval
        self.seen: dict[str, dict[str, str]] = {}  # container id -> labels
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for container in self.client.containers.list(all=True, filters={"label": "mlops.run_id"}):
                self.seen.setdefault(container.id, dict(container.labels))
            self._stop.wait(self.interval)

    def __enter__(self) -> ContainerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def steps(self, run_id: str) -> list[str]:
        return [labels["mlops.step"] for labels in self.seen.values() if labels.get("mlops.run_id") == run_id]


def test_training_dag_runs_every_step_in_its_own_container(docker_dag, docker_client, mlflow_server):
    from mlflow import MlflowClient

    dag, home = docker_dag
    assert {t.task_id: t.python_callable.__name__ for t in dag.tasks} == dict.fromkeys(
        STEPS, "run_step_in_container"
    )
    with ContainerWatch(docker_client) as watch:
        run = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert set(states.values()) == {"success"}

    # one container per step, none reused, none retried
    assert sorted(watch.steps(run.run_id)) == sorted(STEPS), watch.seen
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
