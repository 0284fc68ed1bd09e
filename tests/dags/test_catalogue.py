"""The model catalogue: a folder of configs gives one set of DAGs per model, and a bad one breaks none.

``MLOPS_CONFIG_DIR`` holds the bundled flights and car-loan configs (as a team would copy them in)
and one config that does not validate. Every DAG file builds the DAGs of both good models, each
from its own config (schedule, assets, form defaults, the config its steps read), and the bad file
shows as one import error, of ``dags/catalogue.py``, with its validation message.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import model_catalogue
from pipelines.catalogue import load_catalogue, model_key
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ROOT / "pipelines" / "datasets"
KINDS = ("training", "deploy", "monitoring", "batch_inference", "features", "rollback")


def make_catalogue(folder: Path, *, bad: bool = True) -> Path:
    model_catalogue(folder)
    if bad:
        broken = yaml.safe_load((DATASETS / "car_loan.yaml").read_text())
        broken["registry"]["model_name"] = "churn"
        broken["gate"]["min_value"] = "very high"  # not a number
        (folder / "churn.yaml").write_text(yaml.safe_dump(broken))
    return folder


@pytest.fixture(scope="module")
def catalogue_bag(tmp_path_factory):
    from airflow.dag_processing.dagbag import DagBag

    folder = make_catalogue(tmp_path_factory.mktemp("models"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_CONFIG_DIR", str(folder))
        mp.delenv("MLOPS_CONFIG", raising=False)
        yield DagBag(dag_folder=str(ROOT / "dags")), folder


def test_each_model_of_the_folder_gets_its_own_dags(catalogue_bag):
    bag, _ = catalogue_bag
    assert set(bag.dag_ids) == {f"{kind}__{key}" for kind in KINDS for key in ("flights_delay", "car_loan")}


def test_a_bad_config_is_one_import_error_naming_it_and_the_others_still_parse(catalogue_bag):
    bag, folder = catalogue_bag
    assert list(bag.import_errors) == [str(ROOT / "dags" / "catalogue.py")]
    message = bag.import_errors[str(ROOT / "dags" / "catalogue.py")]
    assert str(folder / "churn.yaml") in message and "gate.min_value" in message, message
    assert "car_loan.yaml" not in message.replace(str(folder / "churn.yaml"), "")  # only the bad one


def test_every_dag_is_built_from_its_own_models_config(catalogue_bag):
    bag, folder = catalogue_bag
    examples = {"flights_delay": "2013-04-01", "car_loan": "2019-02-01"}  # each data's first full window
    for key, file in (("flights_delay", "flights.yaml"), ("car_loan", "car_loan.yaml")):
        config = load_config(folder / file)
        name = config.registry.model_name
        training = bag.dags[f"training__{key}"]
        assert f"e.g. {examples[key]}." in training.params.get_param("interval_end").description
        assert {a.name for a in training.timetable.asset_condition.objects} == {f"{name}.retrain"}
        assert [o.name for o in training.get_task("register").outlets] == [f"{name}.challenger"]
        assert training.params.dump()["window_months"] == config.ingest.window_months
        assert str(training.timezone.name) == config.schedule.timezone
        deploy = bag.dags[f"deploy__{key}"]
        assert {a.name for a in deploy.timetable.asset_condition.objects} == {f"{name}.challenger"}
        decide = bag.dags[f"monitoring__{key}"].get_task("decide_retrain")
        assert [a.name for a in decide.outlets] == [f"{name}.retrain"]
        assert config.dataset.name in bag.dags[f"rollback__{key}"].tags
        # every step runs with its model's config: each task is handed the file
        for dag_id in (f"{kind}__{key}" for kind in KINDS):
            for task in bag.dags[dag_id].tasks:
                if task.task_id in {"route_approval", "approve"}:
                    continue  # the approval route reads only XComs: no step, no config
                assert task.op_kwargs["config_path"] == str((folder / file).resolve()), (dag_id, task)


def test_in_kubernetes_mode_each_models_pods_get_its_config(tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    folder = make_catalogue(tmp_path / "models", bad=False)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(folder))
    monkeypatch.setenv("MLOPS_EXECUTION_MODE", "kubernetes")
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    for key, file in (("flights_delay", "flights.yaml"), ("car_loan", "car_loan.yaml")):
        ingest = bag.dags[f"training__{key}"].get_task("ingest")
        env = {e.name: e.value for e in ingest.env_vars}
        assert env["MLOPS_CONFIG"] == str((folder / file).resolve())


def test_without_a_folder_the_one_config_keeps_the_plain_dag_ids(dagbag_plain):
    assert {"training", "deploy", "monitoring", "rollback"} <= set(dagbag_plain.dag_ids)
    assert not any("__" in dag_id for dag_id in dagbag_plain.dag_ids)
    # and its steps read MLOPS_CONFIG when they run (a config fixed at parse time would hide a change)
    ingest = dagbag_plain.dags["training"].get_task("ingest")
    assert ingest.op_kwargs.get("config_path") is None


@pytest.fixture
def dagbag_plain(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.delenv("MLOPS_CONFIG_DIR", raising=False)
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_two_configs_of_one_model_name_the_first_and_keep_it(tmp_path):
    folder = make_catalogue(tmp_path, bad=False)
    shutil.copy(DATASETS / "flights.yaml", folder / "zz_flights_again.yaml")
    models = load_catalogue(Settings.from_env({"MLOPS_CONFIG_DIR": str(folder)}))
    assert [m.path.name for m in models if m.config] == ["car_loan.yaml", "flights.yaml"]
    (dup,) = [m for m in models if m.error]
    assert dup.path.name == "zz_flights_again.yaml"
    assert "'flights-delay' is already the model of flights.yaml" in dup.error


def test_a_missing_or_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        load_catalogue(Settings.from_env({"MLOPS_CONFIG_DIR": str(tmp_path / "nope")}))
    (tmp_path / "suite.expectations.yaml").write_text("[]")
    with pytest.raises(ConfigError, match="holds no pipeline config"):
        load_catalogue(Settings.from_env({"MLOPS_CONFIG_DIR": str(tmp_path)}))


def test_model_keys_are_what_dag_ids_accept():
    assert model_key("flights-delay") == "flights_delay"
    assert model_key("Car Loan v2") == "car_loan_v2"


def test_an_alerts_retrain_episode_lasts_its_own_models_cooldown(tmp_path, monkeypatch):
    from mlops_airflow.alerts import COOLDOWN_ENV, cooldown_hours

    folder = make_catalogue(tmp_path, bad=False)
    data = yaml.safe_load((folder / "car_loan.yaml").read_text())
    data.setdefault("monitoring", {}).setdefault("retrain", {})["cooldown_hours"] = 12
    (folder / "car_loan.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.delenv(COOLDOWN_ENV, raising=False)
    monkeypatch.setenv("MLOPS_CONFIG_DIR", str(folder))
    assert cooldown_hours("car-loan") == 12
    assert cooldown_hours("flights-delay") == 168  # flights.yaml's
