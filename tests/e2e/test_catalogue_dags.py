"""Two models side by side from a catalogue folder: each DAG trains and registers its own model.

``MLOPS_CONFIG_DIR`` holds the bundled flights and car-loan configs (the models renamed, so that
they never meet the other tests' entries on the shared MLflow server). Airflow parses one set of
DAGs per model; the car-loan training DAG, run with ``dag.test()`` against the real MLflow server,
trains on car loans (its own window, its own schema) while the worker's environment still names
no config, registers only its own model, and emits only its own model's asset.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
import pytest

from conftest import model_catalogue

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
NAMES = {"flights": "flights-catalogue", "car_loan": "car-loan-catalogue"}


@pytest.fixture(scope="module")
def catalogue_bag(mlflow_server, airflow_db, tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    folder = model_catalogue(tmp_path_factory.mktemp("models"), NAMES)
    home = tmp_path_factory.mktemp("catalogue-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_CONFIG_DIR", str(folder))
        mp.delenv("MLOPS_CONFIG", raising=False)  # the steps must get their model's config from the task
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("MLOPS_HOME", str(home))
        mp.setenv("MLOPS_PREDICTION_LOG", "")
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        yield bag


def test_the_car_loan_dag_of_a_catalogue_trains_and_registers_only_its_model(catalogue_bag, mlflow_server):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from mlflow import MlflowClient

    assert {"training__car_loan_catalogue", "training__flights_catalogue"} <= set(catalogue_bag.dag_ids)
    dag = catalogue_bag.get_dag("training__car_loan_catalogue")
    run = dag.test(logical_date=pendulum.datetime(2019, 2, 1, tz=dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states
    assert "MLOPS_CONFIG" not in os.environ  # the model's config was the step's, and only for the step

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias(NAMES["car_loan"], "champion")
    assert version.version == "1"
    assert version.tags["data.window_end"].startswith("2019-02-01")  # car loans' months, not flights'
    assert version.tags["airflow.dag_id"] == "training__car_loan_catalogue"
    assert not client.search_registered_models(f"name = '{NAMES['flights']}'")  # the other model: untouched

    with create_session() as session:
        emitted = [
            name
            for (name,) in session.query(AssetModel.name)
            .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_run_id == run.run_id)
            .all()
        ]
    assert emitted == [f"{NAMES['car_loan']}.challenger"]
