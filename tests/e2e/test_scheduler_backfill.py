"""Two models side by side through the real Airflow scheduler, and catchup.

The DAGs come from a catalogue folder (``MLOPS_CONFIG_DIR``): the flights and car-loan configs
and a third config that does not load. A backfill of the flights model over Jan-Mar 2013 gives one
model per month while a manual run of the car-loan model trains on its own months; their runs,
registry entries and assets stay apart, and the bad config is one import error that breaks nothing.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, model_catalogue, wait_http

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
STACK = (
    "airflow api-server -H 127.0.0.1 -p $AIRFLOW__API__PORT -w 1 & "
    "airflow dag-processor & airflow scheduler --skip-serve-logs & wait"
)
ROOT = Path(__file__).resolve().parents[2]
FLIGHTS, CAR_LOAN = "training__flights_delay", "training__car_loan"


@pytest.fixture(scope="module")
def scheduler(airflow_db, tmp_path_factory):
    """A backfill created with the CLI, then the scheduler, DAG processor and API server that run it.

    The backfill is created before the scheduler starts: Airflow's metadata database here is SQLite,
    which takes one writer at a time, and `airflow backfill create` inserting its runs while the
    scheduler heartbeats failed once in CI with "database is locked" (SQLAlchemy's 5 s busy wait).
    Production runs Airflow on PostgreSQL, where both write at once.
    """
    home = tmp_path_factory.mktemp("scheduler-home")
    catalogue = model_catalogue(home / "models")
    (catalogue / "churn.yaml").write_text("registry: {model_name: churn}\n")  # does not load
    port = free_port()
    env = {
        **os.environ,
        "MLOPS_CONFIG_DIR": str(catalogue),
        "MLOPS_CONFIG": "",  # only the catalogue names configs: each task gets its model's
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
    # No MLflow store is made here: two models' first tasks create the embedded one (SQLite, no
    # server) at the same moment, as they would for a user (pipelines.tracking serialises that)
    subprocess.run(["airflow", "dags", "reserialize"], env=env, check=True, capture_output=True)
    subprocess.run(
        ["airflow", "dags", "unpause", "--treat-dag-id-as-regex", "--yes", "^training__"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    created = subprocess.run(
        ["airflow", "backfill", "create", "--dag-id", FLIGHTS,
         "--from-date", "2013-01-01", "--to-date", "2013-03-02", "--max-active-runs", "1"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout[-2000:] + created.stderr[-3000:]
    triggered = subprocess.run(
        ["airflow", "dags", "trigger", CAR_LOAN, "--run-id", "car-loan-by-hand",
         "--conf", '{"interval_end": "2019-02-01"}'],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert triggered.returncode == 0, triggered.stdout[-2000:] + triggered.stderr[-3000:]
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


def _query(env, sql: str, *args) -> list[tuple]:
    """Rows of Airflow's metadata database."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        return db.execute(sql, args).fetchall()


def _runs(env, dag_id: str) -> list[dict]:
    """A DAG's runs, read from Airflow's metadata database."""
    rows = _query(env, "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ?", dag_id)
    return [{"run_id": r[0], "run_type": r[1], "state": r[2]} for r in rows]


def test_backfill_over_three_months_gives_one_model_per_month_beside_a_second_model(scheduler):
    env, home = scheduler
    deadline = time.time() + 900
    backfill, by_hand = [], []
    while time.time() < deadline:
        backfill = [r for r in _runs(env, FLIGHTS) if r["run_type"] == "backfill"]
        by_hand = _runs(env, CAR_LOAN)
        runs = [*backfill, *by_hand]
        if len(runs) == 4 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(5)
    assert len(backfill) == 3, backfill
    assert {r["state"] for r in backfill} == {"success"}, backfill
    assert [r["state"] for r in by_hand] == ["success"], by_hand

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"], registry_uri=env["MLFLOW_TRACKING_URI"])
    versions = sorted(client.search_model_versions("name = 'flights-delay'"), key=lambda v: int(v.version))
    window_ends = [v.tags["data.window_end"][:10] for v in versions]
    assert window_ends == ["2013-02-01", "2013-03-01", "2013-04-01"]
    assert len({v.tags["data_hash"] for v in versions}) == 3
    model = client.get_registered_model("flights-delay")
    assert str(model.aliases["champion"]) == "1"  # the first model; promotion is the deploy step's job
    assert str(model.aliases["challenger"]) == "3"

    # the second model: its own window, its own registry entry, its own asset
    (car,) = client.search_model_versions("name = 'car-loan'")
    assert car.tags["data.window_end"].startswith("2019-02-01") and car.tags["airflow.dag_id"] == CAR_LOAN
    emitted = _query(
        env,
        "SELECT DISTINCT asset.name, asset_event.source_dag_id FROM asset_event JOIN asset"
        " ON asset.id = asset_event.asset_id WHERE asset_event.source_dag_id IN (?, ?)",
        FLIGHTS,
        CAR_LOAN,
    )
    assert sorted(emitted) == [("car-loan.challenger", CAR_LOAN), ("flights-delay.challenger", FLIGHTS)]
    # the bad third config: one import error, of the catalogue's file, naming it; the rest parsed
    errors = _query(env, "SELECT filename, stacktrace FROM import_error")
    assert [Path(name).name for name, _ in errors] == ["catalogue.py"], errors
    assert "churn.yaml" in errors[0][1]

    # The tasks forked from a scheduler that had the step modules imported (mlops_airflow/executor.py)
    log = (home / "airflow.log").read_text(errors="replace")
    assert "Loaded executor: ::mlops_airflow.executor.WarmLocalExecutor" in log
    assert "warm-up: step modules imported" in log and "warm-up: could not import" not in log
