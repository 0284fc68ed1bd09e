"""The production profile through the real scheduler: concurrent runs do not corrupt each other.

``profiles/production.env`` with fresh PostgreSQL databases (Airflow's metadata, MLflow's backend,
the prediction log) and moto's S3 server; Airflow's scheduler, API server, DAG processor and
triggerer with LocalExecutor, MLflow's server and the model server, started as ``make demo``
starts them. After a first champion is deployed, two training runs and a monitoring run are
triggered at once while clients send predictions: the monitoring run and the deploy run the first
training triggers overlap it, and the second training queues behind the first (the training DAG
takes one run at a time, ``max_active_runs=1``) and then overlaps the second deploy. Each
registered version must carry its own run's lineage and data hash (read back from its own
snapshot in S3), the other artifacts must parse, no request may fail, and every acknowledged
prediction must be in PostgreSQL.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from pathlib import Path

import httpx
import pandas as pd
import pytest
import sqlalchemy as sa

from conftest import free_port
from pipelines import storage

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]
ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
BUCKET = "mlops-concurrency"
MODEL = "flights-delay"
READER = ("server", "server-secret-2")  # the model server's MLflow user: enough to read the registry


@pytest.fixture(scope="module")
def production_stack(tmp_path_factory):
    import subprocess
    import sys

    import boto3

    from mlops_demo import loop

    names = {k: f"{k}_{uuid.uuid4().hex[:8]}" for k in ("airflow", "mlflow", "log")}
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    s3_port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(s3_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    home = tmp_path_factory.mktemp("production-stack")
    ports = {"airflow": free_port(), "mlflow": free_port(), "server": free_port()}
    mp = pytest.MonkeyPatch()
    stack = None
    try:
        for key, value in {
            "MLOPS_PROFILE": str(ROOT / "profiles" / "production.env"),
            "AIRFLOW_DB": f"{PG}/{names['airflow']}",
            "MLFLOW_DB": f"{PG}/{names['mlflow']}",
            "MLOPS_PREDICTION_DB": f"{PG}/{names['log']}",
            "S3_ENDPOINT": f"http://127.0.0.1:{s3_port}",
            "MLOPS_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
            # the profile puts MLflow behind its basic-auth app: the stack creates the two users
            "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret-2",
            "MLOPS_MLFLOW_PIPELINE_PASSWORD": "pipeline-secret-2",
            "MLOPS_MLFLOW_SERVER_PASSWORD": READER[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-secret-2",
            "MLOPS_CONFIG": str(loop.loop_config(home, ROOT / "pipelines" / "datasets" / "flights.yaml")),
        }.items():
            mp.setenv(key, value)
        deadline = time.time() + 30
        while True:
            try:
                boto3.client("s3").create_bucket(Bucket=BUCKET)
                break
            except Exception:
                assert time.time() < deadline, "moto's S3 server did not start"
                time.sleep(0.5)
        stack, env = loop.start_stack(home, ports)
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith(names["airflow"])
        yield {"airflow": loop.Airflow(ports["airflow"]), "ports": ports, "names": names, "home": home}
    finally:
        if stack:
            stack.stop()
        moto.terminate()
        moto.wait(15)
        mp.undo()
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def snapshot_hash(uri: str) -> str:
    return storage.frame_hash(pd.read_parquet(io.BytesIO(storage.read_bytes(uri))))


def test_concurrent_runs_on_postgres_and_s3_keep_their_own_artifacts_and_lineage(
    production_stack, april_rows, monkeypatch
):
    from mlflow import MlflowClient

    airflow, ports = production_stack["airflow"], production_stack["ports"]
    tracking = f"http://127.0.0.1:{ports['mlflow']}"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", READER[1])
    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)

    first = airflow.trigger("training", {"interval_end": "2013-04-01"})
    assert airflow.wait("training", first, timeout=600)["state"] == "success"
    deadline = time.time() + 300
    while client.get_registered_model(MODEL).aliases.get("champion") is None:
        assert time.time() < deadline, "the deploy DAG never made a champion"
        time.sleep(2)

    while (httpx.get(f"http://127.0.0.1:{ports['server']}/ready").json().get("champion") or {}).get(
        "version"
    ) != "1":  # the server follows the registry: give it its poll and the download from S3
        assert time.time() < deadline, "the model server never loaded the champion"
        time.sleep(1)

    stop, answers = threading.Event(), []
    records = april_rows[0]

    def traffic(seed: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{ports['server']}", timeout=30) as http:
            i = seed
            while not stop.is_set():
                response = http.post("/predict", json={"records": [records[i % len(records)]]})
                answers.append((response.status_code, response.json().get("request_id")))
                i += 2
                # ~20 requests/s per client: traffic throughout the runs and the swaps, without
                # taking from the tasks the CPU that the load tests measure elsewhere
                time.sleep(0.05)

    clients = [threading.Thread(target=traffic, args=(s,)) for s in range(2)]
    for t in clients:
        t.start()
    try:
        runs = {
            ("training", airflow.trigger("training", {"interval_end": "2013-05-01"})),
            ("training", airflow.trigger("training", {"interval_end": "2013-06-01", "window_months": 2})),
            ("monitoring", airflow.trigger("monitoring", {"interval_end": "2013-05-01", "source": "batch"})),
        }
        finished = {(dag, run): airflow.wait(dag, run, timeout=900) for dag, run in runs}
    finally:
        stop.set()
        for t in clients:
            t.join()
    for (dag, run), state in finished.items():
        assert state["state"] == "success", (dag, run, state["tasks"])

    # every registered version carries its own run's lineage and the hash of its own snapshot
    registered = 0
    for (dag, run), state in finished.items():
        if dag != "training" or state["tasks"]["register"] != "success":
            continue
        result = airflow.result(dag, run, "register")
        ingest = airflow.result(dag, run, "ingest")
        version = client.get_model_version(MODEL, result["version"])
        assert version.tags["airflow.run_id"] == run
        assert version.tags["data_hash"] == ingest["data_hash"] == snapshot_hash(ingest["snapshot_uri"])
        assert ingest["snapshot_uri"].startswith(f"s3://{BUCKET}/artifacts/training/")
        registered += 1
    assert registered == 2, finished  # both concurrent trainings passed the gate: two lineages to tell apart
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert len(versions) == 1 + registered  # no duplicate from a retry, none lost

    statuses = [status for status, _ in answers]
    assert statuses and set(statuses) == {200}, set(statuses)
    engine = sa.create_engine(f"{PG}/{production_stack['names']['log']}")
    with engine.connect() as conn:
        logged = {r for (r,) in conn.execute(sa.text("SELECT DISTINCT request_id FROM mlops_predictions"))}
    engine.dispose()
    assert {request_id for _, request_id in answers} <= logged
