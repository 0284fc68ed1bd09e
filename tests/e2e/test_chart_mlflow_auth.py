"""The chart's MLflow with auth, run as the chart renders it: the container's shell wrapper starts
the real ``mlflow server`` with the basic-auth app, and the users Job's command creates the
pipeline's and the server's users. Nothing is re-typed from the templates: the commands and the
environment come from the rendered manifests, the Secret values from the chart's own Secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import httpx
import pytest
import yaml

from conftest import free_port, wait_http

pytestmark = pytest.mark.e2e
CHART = Path(__file__).resolve().parents[2] / "helm" / "mlops"


def _render(port: int) -> list[dict[str, Any]]:
    values = yaml.safe_load((CHART / "values-embedded.yaml").read_text())
    values["mlflow"]["port"] = port
    rendered = helm_python.Chart.load(str(CHART)).render(
        values, name="mlops", namespace="ml", is_install=True
    )
    return [
        d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d
    ]


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _env(container: dict[str, Any], secrets: dict[str, dict[str, str]], **override: str) -> dict[str, str]:
    """The container's environment with each secretKeyRef read from the rendered Secrets."""
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            if ref["name"] in secrets:
                env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return {**env, **override}


def test_the_charts_mlflow_needs_users_and_the_server_user_only_reads(tmp_path):
    port = free_port()
    docs = _render(port)
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    container = _one(docs, "Deployment", "mlops-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["sh", "-c"]
    # a '%' in the database URI: configparser would fail on it unless the wrapper doubles it
    store = tmp_path / "a%zz"
    store.mkdir()
    script = container["command"][2].replace('"/mlops/mlflow"', f'"{tmp_path / "artifacts"}"')
    env = _env(
        container,
        secrets,
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{store / 'mlflow.db'}",
        MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"),
        HOME=str(tmp_path),
    )
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secrets["mlops-mlflow-auth"]["admin-password"]
    with open(tmp_path / "mlflow.log", "wb") as log:
        mlflow = subprocess.Popen(
            ["sh", "-c", script], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api/2.0/mlflow"
    try:
        wait_http(f"{url}/health", 120)
        assert oct((tmp_path / "basic_auth.ini").stat().st_mode & 0o777) == "0o600"  # it holds the URI
        assert httpx.get(f"{api}/registered-models/search").status_code == 401

        job = _one(docs, "Job", "mlops-mlflow-users")["spec"]["template"]["spec"]["containers"][0]
        assert f"http://mlops-mlflow:{port}" in job["command"]  # the Service; here, loopback
        local = {"python": sys.executable, f"http://mlops-mlflow:{port}": url}
        command = [local.get(c, c) for c in job["command"]]
        done = subprocess.run(
            command, env=_env(job, secrets, HOME=str(tmp_path)), capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr

        auth = secrets["mlops-mlflow-auth"]
        pipeline = ("pipeline", auth["pipeline-password"])
        server = ("server", auth["server-password"])
        created = httpx.post(f"{api}/registered-models/create", json={"name": "chart-model"}, auth=pipeline)
        assert created.status_code == 200, created.text
        read = httpx.get(f"{api}/registered-models/get", params={"name": "chart-model"}, auth=server)
        assert read.status_code == 200
        tag = {"name": "chart-model", "key": "mlops.deployment", "value": "{}"}
        assert httpx.post(f"{api}/registered-models/set-tag", json=tag, auth=server).status_code == 403
        assert httpx.post(f"{api}/registered-models/set-tag", json=tag, auth=pipeline).status_code == 200
        # the served model's name was claimed by the Job: the pipeline's before any server could take it
        served = {"name": "flights-delay", "key": "mlops.deployment", "value": "{}"}
        assert httpx.post(f"{api}/registered-models/set-tag", json=served, auth=server).status_code == 403
        assert httpx.post(f"{api}/registered-models/set-tag", json=served, auth=pipeline).status_code == 200
    finally:
        os.killpg(mlflow.pid, signal.SIGTERM)
        mlflow.wait(30)
    assert auth["admin-password"] not in (tmp_path / "mlflow.log").read_text()


def test_the_db_upgrade_job_migrates_with_the_uri_kept_off_its_command_line(tmp_path):
    """Review 4, low: the Job ran ``mlflow db upgrade $(MLFLOW_BACKEND_STORE_URI)``, which the
    kubelet expands into the process's argv, so the database password showed in ``ps``."""
    docs = _render(free_port())
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    job = _one(docs, "Job", "mlops-mlflow-db-upgrade")["spec"]["template"]["spec"]["containers"][0]
    database = tmp_path / "password-s3cr3t" / "mlflow.db"
    database.parent.mkdir()
    uri = f"sqlite:///{database}"
    command = [sys.executable if part == "python" else part for part in job["command"]]
    assert not any("s3cr3t" in part or "$(" in part for part in command)
    env = _env(job, secrets, MLFLOW_BACKEND_STORE_URI=uri, HOME=str(tmp_path))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import sqlite3

    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables and revision
    # a URI it cannot use fails the Job (Helm then stops the upgrade), naming the problem
    env["MLFLOW_BACKEND_STORE_URI"] = "nosuchdb://x"
    failed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "nosuchdb" in failed.stderr
