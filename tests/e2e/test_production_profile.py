"""The production profile: MLflow on PostgreSQL, every artifact in an S3-compatible store.

``profiles/production.env`` is loaded as `make up` loads it; moto's S3 server stands in for the
object store and the machine's PostgreSQL holds MLflow's backend and the prediction log. MLflow
runs behind its basic-auth app, as the profile asks: the training DAG runs through ``dag.test()``
as the ``pipeline`` user, then a model server follows the registry as ``server`` (read only) and
logs to PostgreSQL. (Airflow's own metadata stays on this session's SQLite: it is chosen when
Airflow is first imported.)
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pendulum
import pytest
import sqlalchemy as sa

from conftest import ServerProcess, dataset_config, free_port, wait_http
from mlops_demo.stack import load_profile, mlflow_server_cmd
from pipelines import registry_auth
from pipelines.storage import sql_url

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432"  # plain, as the README writes it
MODEL = "flights-prod"
BUCKET = "mlops-prod"
AUTH_SECRETS = {
    "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-secret-1",
    "MLOPS_MLFLOW_PIPELINE_PASSWORD": "pipeline-secret-1",
    "MLOPS_MLFLOW_SERVER_PASSWORD": "server-secret-1",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-secret-1",
}


@pytest.fixture(scope="module")
def databases():
    """Two fresh PostgreSQL databases: MLflow's backend and the prediction log."""
    names = {"mlflow": f"mlflow_{uuid.uuid4().hex[:8]}", "log": f"mlops_{uuid.uuid4().hex[:8]}"}
    admin = sa.create_engine(sql_url(f"{PG}/postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    # MLflow's server takes a SQLAlchemy URL with the driver; the prediction log takes the plain form
    yield {"mlflow": sql_url(f"{PG}/{names['mlflow']}"), "log": f"{PG}/{names['log']}"}
    with admin.connect() as conn:
        for name in names.values():
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """moto's S3-compatible server on loopback, with the bucket created."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, 60)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def production(databases, s3_endpoint, airflow_db, tmp_path_factory, flights_frame):
    """The profile's environment, an MLflow server on it, and the training DAG parsed under it."""
    import boto3
    from airflow.dag_processing.dagbag import DagBag

    home = tmp_path_factory.mktemp("production")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {
            "MLFLOW_DB": databases["mlflow"],
            "MLOPS_PREDICTION_DB": databases["log"],
            "S3_ENDPOINT": s3_endpoint,
            "MLOPS_BUCKET": BUCKET,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            **AUTH_SECRETS,
        }.items():
            mp.setenv(key, value)
        profile = load_profile(ROOT / "profiles" / "production.env")
        for key, value in profile.items():
            if not key.startswith("AIRFLOW__"):
                mp.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)

        port = free_port()
        server_log = home / "mlflow.log"
        with open(server_log, "wb") as out:
            mlflow = subprocess.Popen(
                mlflow_server_cmd(home, port), env=registry_auth.server_env(home, dict(os.environ)),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        tracking = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{tracking}/health", 120)
            registry_auth.ensure_users(tracking, dict(os.environ))
            for key, value in registry_auth.as_role(dict(os.environ), "pipeline").items():
                mp.setenv(key, value)  # this process runs the DAG's tasks: it is the pipeline
            for key in registry_auth.SECRETS:
                mp.delenv(key)
            mp.setenv("MLFLOW_TRACKING_URI", tracking)
            mp.setenv("MLOPS_HOME", str(home))
            source = home / "flights.parquet"
            flights_frame.to_parquet(source)
            names = {"registry.model_name": MODEL, "registry.experiment": MODEL}
            mp.setenv("MLOPS_CONFIG", str(dataset_config(home, str(source), **names)))
            dag = DagBag(dag_folder=str(ROOT / "dags")).get_dag("training")
            yield {"dag": dag, "profile": profile, "tracking": tracking, "home": home, "log": server_log}
        finally:
            mlflow.terminate()
            mlflow.wait(20)


def s3_keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_training_in_the_production_profile_writes_to_postgres_and_s3(production, databases):
    assert production["profile"]["MLOPS_ARTIFACT_ROOT"] == f"s3://{BUCKET}/artifacts"
    dag = production["dag"]
    run = dag.test(logical_date=pendulum.datetime(2013, 4, 1, tz=dag.timezone))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert str(run.state) == "success", states

    # the pipeline's run-scoped artifacts are objects in the bucket, none on local disk
    keys = s3_keys("artifacts/training/")
    for step, name in [("ingest", "snapshot.parquet"), ("validate", "validation.json"),
                       ("evaluate", "comparison.html")]:  # fmt: skip
        assert any(k.endswith(f"/{step}/{name}") for k in keys), (step, keys[:10])
    assert not (production["home"] / "artifacts" / "training").exists()
    # MLflow's model files went through the server into the bucket
    assert any(k.endswith("MLmodel") for k in s3_keys("mlflow/"))
    # and the registry lives in PostgreSQL
    engine = sa.create_engine(sql_url(databases["mlflow"]))
    with engine.connect() as conn:
        aliases = conn.execute(
            sa.text("SELECT alias, version FROM registered_model_aliases WHERE name = :n"), {"n": MODEL}
        ).all()
    engine.dispose()
    assert ("champion", 1) in [(a, int(v)) for a, v in aliases]


def test_model_server_in_the_production_profile_logs_to_postgres(production, databases, april_rows):
    records, _ = april_rows
    reader = {"MLFLOW_TRACKING_USERNAME": "server", "MLFLOW_TRACKING_PASSWORD": "server-secret-1"}
    # the production registry, named: whatever tracking URI an earlier test of this worker left in
    # the environment (the serving models train on the tests' own MLflow server), not that one
    registry = {"MLFLOW_TRACKING_URI": production["tracking"], "MLFLOW_REGISTRY_URI": production["tracking"]}
    server = ServerProcess(
        {"MLOPS_SERVING_MODEL": MODEL, "MLOPS_PREDICTION_LOG": databases["log"], **reader, **registry},
        production["home"] / "serve.log",
    ).start()
    try:
        body = json.dumps({"records": records[:5], "routing_key": "prod-1"}).encode()
        request = urllib.request.Request(
            f"{server.url}/predict", data=body, headers={"content-type": "application/json"}
        )
        for _ in range(150):  # the server loads the champion from the registry off the request path
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                assert exc.code == 503, exc.read()
                time.sleep(0.2)
        assert answer["model_version"] == "1" and len(answer["predictions"]) == 5
    finally:
        server.stop()
    engine = sa.create_engine(sql_url(databases["log"]))
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text("SELECT count(*) FROM mlops_predictions WHERE request_id = :r"),
            {"r": answer["request_id"]},
        ).scalar()
    engine.dispose()
    assert logged == 5  # every acknowledged row is in the production log


def test_mlflow_in_the_production_profile_needs_a_user_and_the_server_user_only_reads(production):
    """No request without credentials; the model server's user reads the registry but cannot
    register a version or move ``champion``; the pipeline's user did both (the DAG above)."""
    import httpx

    api = f"{production['tracking']}/api/2.0/mlflow"
    anonymous = httpx.get(f"{api}/registered-models/get", params={"name": MODEL})
    assert anonymous.status_code == 401
    wrong = httpx.get(f"{api}/registered-models/get", params={"name": MODEL}, auth=("server", "guess"))
    assert wrong.status_code == 401
    reader = ("server", AUTH_SECRETS["MLOPS_MLFLOW_SERVER_PASSWORD"])
    model = httpx.get(f"{api}/registered-models/get", params={"name": MODEL}, auth=reader)
    assert model.status_code == 200
    assert {"alias": "champion", "version": "1"} in model.json()["registered_model"]["aliases"]
    moved = httpx.post(
        f"{api}/registered-models/alias",
        json={"name": MODEL, "alias": "champion", "version": "1"},
        auth=reader,
    )
    tagged = httpx.post(
        f"{api}/registered-models/set-tag", json={"name": MODEL, "key": "mlops.deployment", "value": "{}"},
        auth=reader,
    )  # fmt: skip
    assert moved.status_code == 403 and tagged.status_code == 403
    # the profile's secrets reach the MLflow server only: this process holds the pipeline's user
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert all(key not in os.environ for key in registry_auth.SECRETS)


BOOTSTRAP = [sys.executable, "-m", "pipelines.registry_auth", "ensure-users", "--url"]


def test_the_bootstrap_claims_the_registry_names_a_server_user_could_take(production):
    """Review 3, H3: MLflow lets any user create a registered model and makes it its manager, so the
    servers' read-only user could take a name before the pipeline's first run and move
    ``champion``. The bootstrap claims the configuration's names and each ``--model``: created as
    ``pipeline`` where missing, ``server`` back to READ where it had taken one, and a loud error."""
    import httpx

    api = f"{production['tracking']}/api/2.0/mlflow"
    post = functools.partial(httpx.post, timeout=60)  # a loaded machine: MLflow's first write is slow
    reader = ("server", AUTH_SECRETS["MLOPS_MLFLOW_SERVER_PASSWORD"])
    writer = ("pipeline", AUTH_SECRETS["MLOPS_MLFLOW_PIPELINE_PASSWORD"])
    taken, fresh, prompt = f"{MODEL}-taken", f"{MODEL}-fresh", f"{MODEL}-prompt"
    assert post(f"{api}/registered-models/create", json={"name": taken}, auth=reader).status_code == 200
    # review 4: created flagged as a prompt, a name was managed through MLflow's prompt family
    flagged = {"name": prompt, "tags": [{"key": "mlflow.prompt.is_prompt", "value": "true"}]}
    assert post(f"{api}/registered-models/create", json=flagged, auth=reader).status_code == 200
    credentials = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    env = {**{k: v for k, v in os.environ.items() if k not in credentials}, **AUTH_SECRETS}
    command = [*BOOTSTRAP, production["tracking"], "--model", taken, "--model", fresh, "--model", prompt]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode != 0, first.stdout
    assert f"registered model '{taken}' (MANAGE)" in first.stderr and "'server' only reads" in first.stderr
    assert f"registered model '{prompt}' (created as a prompt: deleted, then created again)" in first.stderr
    for name in (MODEL, taken, fresh, prompt):
        tag = {"name": name, "key": "mlops.claim-test", "value": "x"}
        assert post(f"{api}/registered-models/set-tag", json=tag, auth=reader).status_code == 403, name
        assert post(f"{api}/registered-models/set-tag", json=tag, auth=writer).status_code == 200, name
        moved = {"name": name, "alias": "champion", "version": "1"}
        assert post(f"{api}/registered-models/alias", json=moved, auth=reader).status_code == 403, name
        gone = httpx.request(
            "DELETE", f"{api}/registered-models/delete", json={"name": name}, auth=reader, timeout=60
        )
        assert gone.status_code == 403, name
    # the monitoring experiment (detect_drift logs there) is the pipeline's too
    monitoring = httpx.get(
        f"{api}/experiments/get-by-name",
        params={"experiment_name": f"{MODEL}-monitoring"},
        auth=writer,
        timeout=60,
    )
    assert monitoring.status_code == 200
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr  # repaired: nothing is taken any more
    assert f"model '{fresh}' (experiment '{MODEL}')" in again.stdout


def test_a_rotated_password_takes_effect_through_the_bootstrap_command(production):
    """The chart's bootstrap Job runs ``python -m pipelines.registry_auth ensure-users``: run as
    typed, it makes a changed secret the user's password (regression: an existing user kept its
    first password, so a rotated Secret locked the model servers out)."""
    import httpx

    api = f"{production['tracking']}/api/2.0/mlflow"
    rotated = {**AUTH_SECRETS, "MLOPS_MLFLOW_SERVER_PASSWORD": "server-secret-rotated"}
    credentials = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    env = {k: v for k, v in os.environ.items() if k not in credentials}
    try:
        done = subprocess.run(
            [*BOOTSTRAP, production["tracking"]],
            env={**env, **rotated}, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "MLflow users pipeline, server are in place" in done.stdout
        get = functools.partial(httpx.get, f"{api}/registered-models/get", params={"name": MODEL})
        assert get(auth=("server", "server-secret-rotated")).status_code == 200
        assert get(auth=("server", AUTH_SECRETS["MLOPS_MLFLOW_SERVER_PASSWORD"])).status_code == 401
        missing = subprocess.run(
            [*BOOTSTRAP, production["tracking"]],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert missing.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in missing.stderr
    finally:  # the module's other tests use the first password
        subprocess.run(
            [*BOOTSTRAP, production["tracking"]],
            env={**env, **AUTH_SECRETS}, check=True, capture_output=True, timeout=120,
        )  # fmt: skip
