"""Catchup through the real Airflow scheduler: a backfill over Jan-Mar 2013 gives one model per month."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
STACK = (
    "airflow api-server -H 127.0.0.1 -p $AIRFLOW__API__PORT -w 1 & "
    "airflow dag-processor & airflow scheduler --skip-serve-logs & wait"
)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def scheduler(airflow_db, tmp_path_factory):
    """A backfill created with the CLI, then the scheduler, DAG processor and API server that run it.

    The backfill is created before the scheduler starts: Airflow's metadata database here is SQLite,
    which takes one writer at a time, and `airflow backfill create` inserting its runs while the
    scheduler heartbeats failed once in CI with "database is locked" (SQLAlchemy's 5 s busy wait).
    Production runs Airflow on PostgreSQL, where both write at once.
    """
    home = tmp_path_factory.mktemp("scheduler-home")
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "mlops-test-secret",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        # Backfills need the DAG unpaused; with cron scheduling off, unpausing adds no scheduled run.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    }
    subprocess.run(["airflow", "dags", "reserialize"], env=env, check=True, capture_output=True)
    subprocess.run(["airflow", "dags", "unpause", "training"], env=env, check=True, capture_output=True)
    created = subprocess.run(
        ["airflow", "backfill", "create", "--dag-id", "training",
         "--from-date", "2013-01-01", "--to-date", "2013-03-02", "--max-active-runs", "1"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-3000:]
    log = open(home / "airflow.log", "wb")  # noqa: SIM115 - held open for the processes' lifetime
    group = subprocess.Popen(
        ["bash", "-c", STACK],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/api/v2/monitor/health", 120)
        yield env, home
    finally:
        os.killpg(group.pid, signal.SIGTERM)
        try:
            group.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(group.pid, signal.SIGKILL)
        log.close()


def _runs(env) -> list[dict]:
    """The training DAG's runs, read from Airflow's metadata database."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        rows = db.execute("SELECT run_id, run_type, state FROM dag_run WHERE dag_id = 'training'").fetchall()
    return [{"run_id": r[0], "run_type": r[1], "state": r[2]} for r in rows]


def test_backfill_over_three_months_gives_one_model_per_month(scheduler):
    env, home = scheduler
    deadline = time.time() + 900
    backfill = []
    while time.time() < deadline:
        backfill = [r for r in _runs(env) if r["run_type"] == "backfill"]
        if len(backfill) == 3 and all(r["state"] in ("success", "failed") for r in backfill):
            break
        time.sleep(5)
    assert len(backfill) == 3, backfill
    assert {r["state"] for r in backfill} == {"success"}, backfill

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    versions = sorted(client.search_model_versions("name = 'flights-delay'"), key=lambda v: int(v.version))
    window_ends = [v.tags["data.window_end"][:10] for v in versions]
    assert window_ends == ["2013-02-01", "2013-03-01", "2013-04-01"]
    assert len({v.tags["data_hash"] for v in versions}) == 3
    model = client.get_registered_model("flights-delay")
    assert str(model.aliases["champion"]) == "1"  # the first model; promotion is the deploy step's job
    assert str(model.aliases["challenger"]) == "3"

    # The tasks forked from a scheduler that had the step modules imported (mlops_airflow/executor.py)
    log = (home / "airflow.log").read_text(errors="replace")
    assert "Loaded executor: ::mlops_airflow.executor.WarmLocalExecutor" in log
    assert "warm-up: step modules imported" in log and "warm-up: could not import" not in log
