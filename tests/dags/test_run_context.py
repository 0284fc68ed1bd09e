"""How a task's Airflow context becomes the step's run context: interval, overrides, asset runs."""

from __future__ import annotations

from types import SimpleNamespace

import pendulum

from mlops_airflow.step_tasks import run_context
from pipelines.context import StepContext

NY = "America/New_York"


def airflow_context(conf=None, interval=None, events=None, run_after=None, run_type="manual"):
    dag_run = SimpleNamespace(
        dag_id="training", run_id="r1", conf=conf or {}, run_type=run_type, run_after=run_after
    )
    start, end = interval or (None, None)
    return {
        "dag_run": dag_run,
        "ti": SimpleNamespace(try_number=2),
        "params": {"window_months": 3, "estimator": "hist_gradient_boosting", **(conf or {})},
        "data_interval_start": start,
        "data_interval_end": end,
        "triggering_asset_events": events or {},
    }


def test_scheduled_run_uses_its_interval_and_the_config(store):
    interval = (pendulum.datetime(2013, 3, 1, tz=NY), pendulum.datetime(2013, 4, 1, tz=NY))
    ctx = run_context(airflow_context(interval=interval, run_type="scheduled"))
    assert ctx["overrides"] == {}  # form defaults never mask the worker's config
    assert ctx["try_number"] == 2 and ctx["run_type"] == "scheduled"
    step = StepContext.create(**ctx)
    assert step.interval_start.isoformat() == "2013-03-01T05:00:00+00:00"
    assert step.interval_end.isoformat() == "2013-04-01T04:00:00+00:00"


def test_manual_run_from_the_form_overrides_interval_and_parameters(store):
    conf = {"interval_end": "2013-06-01", "estimator": "logistic_regression", "window_months": 2}
    interval = (pendulum.datetime(2026, 10, 1, tz=NY), pendulum.datetime(2026, 11, 1, tz=NY))
    ctx = run_context(airflow_context(conf=conf, interval=interval))
    assert ctx["overrides"] == {"estimator": "logistic_regression", "window_months": 2}
    step = StepContext.create(**ctx)
    assert step.interval_end.isoformat() == "2013-06-01T04:00:00+00:00"
    assert step.interval_start.isoformat() == "2013-05-01T04:00:00+00:00"
    assert step.config.training.estimator == "logistic_regression"


def test_asset_triggered_run_takes_the_window_from_the_event(store):
    event = SimpleNamespace(extra={"interval_end": "2013-07-01", "report": "drift.json"})
    ctx = run_context(
        airflow_context(
            events={"retrain": [event]}, run_after=pendulum.datetime(2026, 11, 23), run_type="asset"
        )
    )
    assert ctx["interval_end"] == "2013-07-01" and ctx["interval_start"] is None
    bare = run_context(airflow_context(run_after=pendulum.datetime(2026, 11, 23, tz="UTC")))
    assert bare["interval_end"].startswith("2026-11-23")  # live data: the window ends when the run was due
