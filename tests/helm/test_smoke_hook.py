"""`helm test`'s smoke pod (helm/mlops/templates/tests/smoke-test.yaml): rendered by the Helm engine,
then its own script run here against a real MLflow server and a real model server (no champion:
a fresh install), with the Services' names swapped for loopback ports. The release workflow runs
this pod after each `helm upgrade --install`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_chart import RELEASE, merged, one, render, values_file

from conftest import ServerProcess, free_port


def smoke_pod(values: dict[str, Any]) -> dict[str, Any]:
    return one(render(values), "Pod", f"{RELEASE}-smoke-test")


def run_smoke(
    pod: dict[str, Any], urls: dict[str, str], timeout: int = 20
) -> subprocess.CompletedProcess[str]:
    """The pod's container command, as the pod runs it, with its environment and these URLs."""
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    checks = json.loads(env["SMOKE_CHECKS"])
    env["SMOKE_CHECKS"] = json.dumps(
        {name: urls.get(name, url) if url else "" for name, url in checks.items()}
    )
    env["SMOKE_READY"] = urls.get("ready", env["SMOKE_READY"])
    env["SMOKE_TIMEOUT_SECONDS"] = str(timeout)
    command = [sys.executable if part == "python" else part for part in container["command"]]
    return subprocess.run(
        [*command, *container["args"]], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_smoke_pod_is_a_test_hook_that_checks_the_releases_services() -> None:
    pod = smoke_pod(values_file("values-production.yaml"))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert json.loads(env["SMOKE_CHECKS"]) == {
        "mlflow": f"http://{RELEASE}-mlflow:5000/health",
        "model-server": f"http://{RELEASE}-model-server:8000/health",
        "airflow": f"http://{RELEASE}-api-server:8080/api/v2/monitor/health",
    }
    # the Services it names are the chart's own
    docs = render(values_file("values-production.yaml"))
    for name, port in ((f"{RELEASE}-mlflow", 5000), (f"{RELEASE}-model-server", 8000)):
        assert port in [p["port"] for p in one(docs, "Service", name)["spec"]["ports"]], name
    off = render(merged(values_file("values-production.yaml"), {"smokeTest": {"enabled": False}}))
    assert not [d for d in off if d["kind"] == "Pod"]


def test_the_smoke_script_passes_on_live_services_and_names_a_dead_one(mlflow_server, tmp_path: Path) -> None:
    pod = smoke_pod(merged(values_file("values-embedded.yaml"), {"airflow": {"enabled": False}}))
    server = ServerProcess(
        {"MLFLOW_TRACKING_URI": mlflow_server, "MLOPS_SERVING_MODEL": "no-champion-yet"},
        tmp_path / "serve.log",
    ).start()
    try:
        live = {
            "mlflow": f"{mlflow_server}/health",
            "model-server": f"{server.url}/health",
            "ready": f"{server.url}/ready",
        }
        done = run_smoke(pod, live)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "ok   mlflow" in done.stdout and "ok   model-server" in done.stdout
        assert "not ready" in done.stdout  # reported, not a failure: a fresh install has no champion
        dead = f"http://127.0.0.1:{free_port()}/health"
        done = run_smoke(pod, {**live, "model-server": dead}, timeout=6)
        assert done.returncode == 1 and f"FAIL model-server: {dead}" in done.stderr, done.stderr
        assert "ok   mlflow" in done.stdout
    finally:
        server.stop()
