"""DAG integrity: every DAG parses offline, follows policy, and parsing imports no ML library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.pipeline import BATCH_INFERENCE, DEPLOY, MONITORING, ROLLBACK, TRAINING
from pipelines.settings import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parents[2]
DAG_FILES = sorted(p for p in (ROOT / "dags").glob("*.py") if p.name != "__init__.py")
HEAVY = [
    "pandas",
    "numpy",
    "sklearn",
    "mlflow",
    "great_expectations",
    "skops",
    "matplotlib",
    "scipy",
    "pyarrow",
    "pipelines.steps",
]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_every_dag_file_parses(dagbag):
    assert DAG_FILES, "no DAG files found"
    assert dagbag.import_errors == {}
    assert "training" in dagbag.dag_ids


def test_every_dag_has_tags_and_retries(dagbag):
    for dag_id in dagbag.dag_ids:
        dag = dagbag.dags[dag_id]
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


# Waits for a person, for as long as that takes.
NO_DEADLINE = {("deploy", "approve")}


def test_every_task_has_a_deadline(dagbag):
    """A try that hangs (a database, the registry, the cluster) fails and is retried, never holding
    its slot and the run for ever; per step from the execution config (``timeout_minutes``)."""
    for dag_id in dagbag.dag_ids:
        for task in dagbag.dags[dag_id].tasks:
            if (dag_id, task.task_id) in NO_DEADLINE:
                assert task.execution_timeout is None
                continue
            assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"
            assert task.execution_timeout.total_seconds() > 0
    assert dagbag.dags["training"].get_task("train").execution_timeout.total_seconds() == 6 * 3600


def test_timeouts_come_from_the_execution_config(tmp_path):
    from mlops_airflow.execution import load_execution

    path = tmp_path / "execution.yaml"
    path.write_text("timeout_minutes: {default: 10, evaluate: 30}\n")
    execution = load_execution({"MLOPS_EXECUTION_CONFIG": str(path)})
    assert execution.timeout_for("evaluate").total_seconds() == 30 * 60
    assert execution.timeout_for("ingest").total_seconds() == 10 * 60
    assert execution.timeout_for("train").total_seconds() == 360 * 60  # built in, not overridden
    path.write_text("timeout_minutes: {train: 0}\n")
    with pytest.raises(ValueError, match="timeout_minutes must be > 0 for train"):
        load_execution({"MLOPS_EXECUTION_CONFIG": str(path)})


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_parsing_a_dag_file_imports_no_ml_library(path):
    probe = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('dag_under_test', {str(path)!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_training_dag_wires_the_pipeline_spec(dagbag):
    dag = dagbag.dags["training"]
    assert [t.task_id for t in dag.topological_sort()] == [s.name for s in TRAINING]
    for step in TRAINING:
        assert dag.get_task(step.name).upstream_task_ids == set(step.inputs)


def test_training_dag_params_form_and_schedule(dagbag):
    dag = dagbag.dags["training"]
    config = load_config(DEFAULT_CONFIG)
    params = dag.params.dump()
    assert params["window_months"] == config.ingest.window_months
    assert params["estimator"] == config.training.estimator
    assert params["gate_min_value"] == config.gate.min_value
    assert params["interval_end"] is None
    assert str(dag.timezone.name) == config.schedule.timezone
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    asset_names = {asset.name for asset in dag.timetable.asset_condition.objects}
    assert asset_names == {f"{config.registry.model_name}.retrain"}
    outlets = dag.get_task("register").outlets
    assert [o.name for o in outlets] == [f"{config.registry.model_name}.challenger"]


def test_monthly_data_intervals_in_the_dataset_timezone(dagbag):
    import pendulum
    from airflow.serialization.serialized_objects import DagSerialization

    dag = dagbag.dags["training"]
    scheduled = DagSerialization.from_dict(DagSerialization.to_dict(dag))  # as the scheduler sees it
    interval = scheduled.timetable.infer_manual_data_interval(
        run_after=pendulum.datetime(2013, 4, 1, tz=dag.timezone)
    )
    assert interval.start == pendulum.datetime(2013, 3, 1, tz="America/New_York")
    assert interval.end == pendulum.datetime(2013, 4, 1, tz="America/New_York")


def test_execution_modes_are_explicit():
    from mlops_airflow.step_tasks import step_task

    with pytest.raises(ValueError, match="unknown execution mode 'gpu'"):
        step_task("ingest", mode="gpu")
    assert type(step_task("ingest", mode="kubernetes")).__name__ == "StepPodOperator"
    assert step_task("ingest", mode="docker").python_callable.__name__ == "run_step_in_container"


@pytest.mark.parametrize(
    ("dag_id", "spec"),
    [
        ("deploy", DEPLOY),
        ("batch_inference", BATCH_INFERENCE),
        ("rollback", ROLLBACK),
        ("monitoring", MONITORING),
    ],
)
def test_deploy_batch_and_rollback_dags_wire_their_specs(dagbag, dag_id, spec):
    dag = dagbag.dags[dag_id]
    approval = {"route_approval", "approve"}  # deploy: the human-approval route (approval_gate)
    assert [t.task_id for t in dag.topological_sort() if t.task_id not in approval] == [s.name for s in spec]
    for step in spec:
        upstream = dag.get_task(step.name).upstream_task_ids
        if dag_id == "deploy" and step.name == "start_rollout":
            assert upstream == {"validate_serving", "route_approval", "approve"}
            assert dag.get_task(step.name).trigger_rule == "none_failed_min_one_success"
            continue
        assert upstream == set(step.inputs)


def test_deploy_routes_wide_swings_and_opted_in_rollouts_to_a_person(dagbag):
    """The branch goes through the HITL approval only when config asks or the version carries a swing."""
    from types import SimpleNamespace

    from airflow.providers.standard.operators.hitl import ApprovalOperator

    from mlops_airflow.approval import route_approval

    dag = dagbag.dags["deploy"]
    assert isinstance(dag.get_task("approve"), ApprovalOperator)
    assert dag.get_task("route_approval").downstream_task_ids == {"approve", "start_rollout"}

    class TI:
        def __init__(self, result):
            self.result = result

        def xcom_pull(self, task_ids):
            return self.result

    calm = {"model_name": "m", "version": "2", "approval_reason": None}
    assert route_approval(False, ti=TI(calm), dag_run=None) == "start_rollout"
    swing = {**calm, "approval_reason": "roc_auc 0.80 vs champion 0.65: a change of +0.15"}
    run = SimpleNamespace(dag_id="deploy", run_id="manual__swing")
    assert route_approval(False, ti=TI(swing), dag_run=run) == "approve"
    assert route_approval(True, ti=TI(calm), dag_run=run) == "approve"


def test_deploy_dag_runs_on_a_registered_challenger_and_polls_the_verdict(dagbag):
    dag = dagbag.dags["deploy"]
    config = load_config(DEFAULT_CONFIG)
    assert [a.name for a in dag.timetable.asset_condition.objects] == [
        f"{config.registry.model_name}.challenger"
    ]
    sensor = dag.get_task("analyse_rollout")
    assert "Sensor" in type(sensor).__name__
    assert sensor.poke_interval == config.deploy.rollout.poke_seconds
    assert sensor.mode == "reschedule"  # a rollout can take days: do not hold a worker slot
    assert sensor.timeout > config.deploy.rollout.max_wait_hours * 3600  # the step decides first
    assert set(dag.params.dump()) == {"version", "strategy", "share", "min_detectable_effect"}
    assert type(dagbag.dags["rollback"].timetable).__name__ == "NullTimetable"  # manual only


def test_monitoring_emits_the_retrain_asset_that_training_is_scheduled_on(dagbag):
    from mlops_airflow.notifiers import RetrainNotifier

    config = load_config(DEFAULT_CONFIG)
    retrain = f"{config.registry.model_name}.retrain"
    monitoring = dagbag.dags["monitoring"]
    decide = monitoring.get_task("decide_retrain")
    assert [a.name for a in decide.outlets] == [retrain]
    assert any(isinstance(cb, RetrainNotifier) for cb in decide.on_success_callback)
    assert monitoring.get_task("detect_drift").outlets == []  # only a decision emits
    assert monitoring.timetable.summary == "0 0 1 * *, 2013-01-01 to 2014-01-01"  # flights.yaml: @monthly
    assert set(monitoring.params.dump()) == {"interval_end", "source", "drift_share"}
    training = dagbag.dags["training"]
    assert retrain in [a.name for a in training.timetable.asset_condition.objects]
    assert "training_mode" in training.params.dump()


def test_time_schedules_can_be_switched_off_for_a_replay(tmp_path):
    """MLOPS_TIME_SCHEDULES=off: training runs on asset events only; monitoring and batch by hand."""
    probe = (
        "import json\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "print(json.dumps({d: type(bag.dags[d].timetable).__name__ for d in sorted(bag.dag_ids)}))\n"
    )
    env = {**os.environ, "MLOPS_TIME_SCHEDULES": "off"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    timetables = json.loads(out.stdout.strip().splitlines()[-1])
    assert timetables["training"] == "AssetTriggeredTimetable"
    assert timetables["monitoring"] == timetables["batch_inference"] == "NullTimetable"
    assert timetables["deploy"] == "AssetTriggeredTimetable"


# -- a manual run at any logical date runs its tasks (issue 16) ------------------------------------
# Airflow creates a run's task instances only for a logical date between the DAG's (and so every
# task's) start_date and end_date; outside them a run is created with no task and turns green having
# done nothing. The UI's trigger form defaults the logical date to *now*, after a historical dataset's
# end. So no DAG has an end_date, every start_date is the epoch, and the data's span bounds only the
# schedule (``mlops_airflow.schedules.DataSpanTimetable``); a window outside the data then fails at
# its first step, saying why (tests/unit/test_steps.py and the browser tests in tests/e2e/test_ui.py).


def _as_scheduled(dag):
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))  # as the scheduler sees it


def test_no_dag_bounds_the_logical_dates_its_tasks_run_at(dagbag):
    import pendulum

    for dag_id in dagbag.dag_ids:
        dag = _as_scheduled(dagbag.dags[dag_id])
        assert dag.end_date is None, f"{dag_id} has an end_date: a later manual run would get no task"
        for task in dag.tasks:
            assert task.end_date is None, f"{dag_id}.{task.task_id} ends {task.end_date}"
            assert task.start_date <= pendulum.datetime(1970, 1, 2), f"{dag_id}.{task.task_id}"


def test_a_run_at_the_ui_default_logical_date_gets_every_task(dagbag, airflow_db):
    """The UI form's default logical date (now, years after the bundled data) creates every task of
    every DAG; tasks are marked success here, not run (running them is the browser tests' job)."""
    import pendulum

    now = pendulum.now("UTC").replace(microsecond=0)
    for dag_id in sorted(dagbag.dag_ids):
        dag = dagbag.dags[dag_id]
        run = dag.test(logical_date=now, mark_success_pattern=".*")
        created = {ti.task_id for ti in run.get_task_instances()}
        assert created == set(dag.task_ids), f"{dag_id}: no task instance for {set(dag.task_ids) - created}"


@pytest.mark.parametrize(
    ("dag_id", "intervals"),
    [("training", 12), ("monitoring", 12), ("batch_inference", 12), ("features", 365)],
)
def test_scheduled_intervals_lie_inside_the_data(dagbag, dag_id, intervals):
    """The schedule, not the DAG's dates, stops at the data's end: every interval of 2013, none after."""
    import pendulum

    config = load_config(DEFAULT_CONFIG)
    tz = config.schedule.timezone
    dag = _as_scheduled(dagbag.dags[dag_id])
    infos = list(
        dag.iter_dagrun_infos_between(
            pendulum.datetime(2012, 6, 1, tz=tz), pendulum.datetime(2015, 1, 1, tz=tz)
        )
    )
    assert len(infos) == intervals
    assert infos[0].data_interval.start == pendulum.parse(config.schedule.start_date, tz=tz)
    assert infos[-1].data_interval.end == pendulum.parse(config.schedule.end_date, tz=tz)


def test_the_data_span_timetable_survives_serialization_and_differs_from_an_unbounded_one():
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.interval import CronDataIntervalTimetable

    from mlops_airflow.schedules import DataSpanTimetable

    config = load_config(DEFAULT_CONFIG)
    bounded = DataSpanTimetable.for_config(config)
    again = decode_timetable(encode_timetable(bounded))  # as the scheduler reads it back
    assert again == bounded and again.last == pendulum.datetime(2014, 1, 1, tz=config.schedule.timezone)
    assert str(again.first.timezone_name) == config.schedule.timezone
    unbounded = CronDataIntervalTimetable(config.schedule.cron, config.schedule.timezone)
    assert bounded != unbounded and unbounded != bounded
    live = DataSpanTimetable("@daily", "UTC", first=pendulum.datetime(2024, 1, 1))
    assert live.summary == "0 0 * * *, from 2024-01-01 on"


@pytest.mark.parametrize("dag_id", ["training", "deploy", "monitoring"])
def test_each_form_field_is_the_config_schemas_own(dagbag, dag_id):
    """A run parameter's choices and bounds are the config schema's: the form cannot offer a value
    that the config would refuse, nor miss one it accepts (declared once, in pipelines.run_parameters)."""
    from pipelines import run_parameters
    from pipelines.config import PipelineConfig

    config = load_config(DEFAULT_CONFIG)
    params = dagbag.dags[dag_id].params
    declared = run_parameters.for_dag(dag_id)
    assert declared and set(params) - {"interval_end"} == {p.name for p in declared}
    for parameter in declared:
        schema = params.get_param(parameter.name).schema
        expected = run_parameters.field_schema(PipelineConfig, parameter.path)
        assert {k: schema[k] for k in expected if k != "description"} == {
            k: v for k, v in expected.items() if k != "description"
        }, parameter.name
        assert params.get_param(parameter.name).value == run_parameters.default_of(parameter, config)
    if dag_id == "deploy":  # the strategies are the config's Literal, not a copy of it
        assert params.get_param("strategy").schema["enum"] == ["direct", "canary", "shadow", "ab"]
    if dag_id == "training":
        assert params.get_param("window_months").schema | {"minimum": 1, "maximum": 120} == (
            params.get_param("window_months").schema
        )
