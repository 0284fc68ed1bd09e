"""How a task's Airflow context becomes the step's run context: interval, overrides, asset runs."""

from __future__ import annotations

from types import SimpleNamespace

import pendulum

from mlops_airflow.task_context import run_context
from pipelines.context import StepContext

NY = "America/New_York"


def airflow_context(conf=None, interval=None, events=None, run_after=None, run_type="manual", logical=None):
    dag_run = SimpleNamespace(
        dag_id="training", run_id="r1", conf=conf or {}, run_type=run_type, run_after=run_after,
        logical_date=logical,
    )  # fmt: skip
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
    ctx = run_context(airflow_context(interval=interval, run_type="scheduled", logical=interval[1]))
    assert ctx["interval_origin"] == "the run's data interval (its logical date is 2013-04-01 00:00 EDT)"
    assert ctx["overrides"] == {}  # form defaults never mask the worker's config
    assert ctx["try_number"] == 2 and ctx["run_type"] == "scheduled"
    step = StepContext.create(**ctx)
    assert step.interval_start.isoformat() == "2013-03-01T05:00:00+00:00"
    assert step.interval_end.isoformat() == "2013-04-01T04:00:00+00:00"


def test_manual_run_from_the_form_overrides_interval_and_parameters(store):
    conf = {"interval_end": "2013-06-01", "estimator": "logistic_regression", "window_months": 2}
    interval = (pendulum.datetime(2026, 10, 1, tz=NY), pendulum.datetime(2026, 11, 1, tz=NY))
    ctx = run_context(airflow_context(conf=conf, interval=interval))
    assert ctx["interval_origin"] == "the interval_end in the run's conf (the form)"
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
    assert ctx["interval_origin"] == "the interval_end of the asset event that triggered the run"
    bare = run_context(airflow_context(run_after=pendulum.datetime(2026, 11, 23, tz="UTC")))
    assert bare["interval_end"].startswith("2026-11-23")  # live data: the window ends when the run was due
    assert bare["interval_origin"].startswith("the time the run was triggered")


def test_steps_take_registry_and_serving_credentials_from_airflow_connections(monkeypatch):
    """Connections (here from AIRFLOW_CONN_* variables, as the chart fills them from Secrets)
    give the step its MLflow and serving credentials for its duration only; no value is in code."""
    import json
    import os

    from mlops_airflow.step_tasks import with_connections

    mlflow_conn = {"conn_type": "http", "host": "mlflow.internal", "port": 5000, "schema": "https",
                   "login": "ci", "password": "from-a-secret"}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_MLFLOW_DEFAULT", json.dumps(mlflow_conn))
    monkeypatch.setenv("AIRFLOW_CONN_MLOPS_SERVING", json.dumps({"conn_type": "http", "host": "serving",
                       "port": 8000, "password": "serving-token"}))  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///before.db")
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    names = ["MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
             "MLOPS_SERVING_URL", "MLOPS_SERVING_TOKEN"]  # fmt: skip
    seen = {}

    def step(**_):
        seen.update({n: os.environ.get(n) for n in names})
        return {}

    with_connections(step)()
    assert seen == {
        "MLFLOW_TRACKING_URI": "https://mlflow.internal:5000",
        "MLFLOW_TRACKING_USERNAME": "ci",
        "MLFLOW_TRACKING_PASSWORD": "from-a-secret",
        "MLOPS_SERVING_URL": "http://serving:8000",
        "MLOPS_SERVING_TOKEN": "serving-token",
    }
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///before.db"  # restored after the step
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


def test_no_credential_is_written_in_the_code():
    """Scan the code, DAGs, chart values and profiles for literal passwords and tokens."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    files = [*root.glob("pipelines/**/*.py"), *root.glob("plugins/**/*.py"), *root.glob("dags/*.py"),
             *root.glob("helm/mlops/values*.yaml"), *root.glob("profiles/*.env")]  # fmt: skip
    literal = re.compile(
        r"""(password|passwd|secret|token|api_key)\s*[:=]\s*["'][^"'${}<>\s]{6,}["']""", re.I
    )
    found = [f"{p.relative_to(root)}: {m.group(0)}" for p in files for m in literal.finditer(p.read_text())]
    assert not found, found


def test_a_step_ignores_context_keys_it_does_not_know(store, caplog):
    """The Airflow side and a step image may be a release apart: a new key in the run context
    is left out with a warning instead of failing every step of an older image."""
    ctx = run_context(airflow_context(conf={"interval_end": "2013-06-01"}))
    step = StepContext.from_json({**ctx, "added_in_a_later_release": 1})
    assert step.interval_end.isoformat() == "2013-06-01T04:00:00+00:00"
    assert "added_in_a_later_release" in caplog.text
