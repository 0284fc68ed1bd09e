"""The step and serving images, built through the Docker API and run for real."""

from __future__ import annotations

import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from mlops_airflow.containers import read_result
from mlops_airflow.execution import step_arguments

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def run_step(client, image: str, step: str, context: dict, inputs: dict, store: Path):
    """``mlops step`` in a fresh container of ``image``: exit code, result (if any), log."""
    container = client.containers.create(
        image,
        command=step_arguments(step, context, inputs, "/airflow/xcom/return.json"),
        environment={
            "MLOPS_ARTIFACT_ROOT": str(store / "artifacts"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        },
        volumes=[f"{store}:{store}:rw"],
        network_mode="host",
    )
    try:
        container.start()
        code = container.wait(timeout=600)["StatusCode"]
        log = container.logs().decode()
        result = read_result(container) if code in (0, 99) else None
        return code, result, log
    finally:
        container.remove(force=True)


def context(run_id: str, interval_end: str = "2013-02-01") -> dict:
    return {
        "dag_id": "training",
        "run_id": run_id,
        "interval_start": None,
        "interval_end": interval_end,
        "overrides": {"window_months": 1},
    }


def test_images_are_unprivileged_labelled_and_share_their_layers(docker_client, images):
    step, serving = (docker_client.images.get(images[t]["tag"]) for t in ("step", "serving"))
    for image, title in ((step, "mlops-step"), (serving, "mlops-serving")):
        config = image.attrs["Config"]
        assert config["User"] == "10001:10001"
        labels = config["Labels"]
        assert labels["org.opencontainers.image.title"] == title
        assert labels["org.opencontainers.image.version"] == VERSION
        assert len(labels["org.opencontainers.image.revision"]) == 40  # the commit it was built from
    assert step.attrs["Config"]["Entrypoint"] == ["mlops", "step"]
    assert "mlops serve" in " ".join(serving.attrs["Config"]["Entrypoint"])
    probe = docker_client.containers.create(serving.id)  # podman's image API omits the health check
    try:
        assert probe.attrs["Config"]["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")
    finally:
        probe.remove(force=True)
    # dependencies before code: the serving image is the step image's layers plus nothing heavy
    step_layers, serving_layers = step.attrs["RootFS"]["Layers"], serving.attrs["RootFS"]["Layers"]
    assert serving_layers[: len(step_layers) - 1] == step_layers[:-1]


def test_step_image_runs_ingest_then_validate(docker_client, images, shared_store):
    image = images["step"]["tag"]
    code, ingested, log = run_step(docker_client, image, "ingest", context("img-1"), {}, shared_store)
    assert code == 0, log[-2000:]
    assert ingested["rows"] > 20_000 and len(ingested["data_hash"]) == 64
    assert Path(ingested["snapshot_uri"]).is_file()  # the artifact landed in the shared store

    code, validated, log = run_step(
        docker_client, image, "validate", context("img-1"), {"ingest": ingested}, shared_store
    )
    assert code == 0, log[-2000:]
    assert validated["passed"] is True and validated["expectations"] >= 10
    assert Path(validated["report_uri"]).is_file()


def test_step_image_refuses_bad_input_with_exit_code_3(docker_client, images, shared_store):
    code, result, log = run_step(
        docker_client, images["step"]["tag"], "ingest", context("img-2", "not-a-date"), {}, shared_store
    )
    assert code == 3 and result is None  # bad input: Airflow must not retry
    assert "interval_end" in log and "not-a-date" in log
    assert not (shared_store / "artifacts" / "training" / "img-2").exists()


def test_serving_image_answers_health_and_its_health_check_passes(docker_client, images, mlflow_server):
    port = free_port()
    container = docker_client.containers.run(
        images["serving"]["tag"],
        detach=True,
        network_mode="host",
        environment={
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLOPS_SERVING_PORT": str(port),
            "MLOPS_SERVING_MODEL": "no-such-model",
        },
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                container.reload()
                assert container.status == "running", container.logs().decode()[-2000:]
                assert time.time() < deadline, "the server in the serving image never answered /health"
                time.sleep(1)
        with pytest.raises(urllib.error.HTTPError) as not_ready:  # no champion to load: alive, not ready
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert not_ready.value.code == 503
        check = container.attrs["Config"]["Healthcheck"]["Test"]
        command = check[1:] if check[0] == "CMD" else ["sh", "-c", check[1]]
        exit_code, output = container.exec_run(command)
        assert exit_code == 0, output
        assert container.attrs["Config"]["User"] == "10001:10001"
    finally:
        container.remove(force=True)


def test_the_charts_serving_auth_works_in_the_serving_image(docker_client, images, mlflow_server, tmp_path):
    """The chart mounts four Secret keys and points *_FILE variables at them: run that in the real
    image. The readiness probe (GET /ready) needs no token and says only whether to route here."""
    import helm_python
    import yaml

    port = free_port()
    chart_dir = ROOT / "helm" / "mlops"
    values = yaml.safe_load((chart_dir / "values-production.yaml").read_text())
    values["serving"]["port"] = port
    rendered = helm_python.Chart.load(str(chart_dir)).render(values, name="mlops", namespace="ml")
    docs = [
        d for path, text in rendered.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d
    ]
    (server,) = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlops-model-server"
    ]
    container_spec = server["spec"]["template"]["spec"]["containers"][0]
    assert container_spec["readinessProbe"]["httpGet"]["path"] == "/ready"
    files = {e["name"]: e["value"] for e in container_spec["env"] if e["name"].endswith("_FILE")}
    (mount,) = {str(Path(path).parent) for path in files.values()}
    content = {
        "token": "predict-token-0123",
        "feedback-token": "feedback-token-4567",
        "admin-token": "admin-token-89ab",
        "secret": "deployment-secret-0123456789abcdef",
    }
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    secrets.chmod(0o755)
    for key, value in content.items():
        (secrets / key).write_text(value + "\n")
        (secrets / key).chmod(0o644)
    assert {Path(path).name for path in files.values()} == set(content)
    container = docker_client.containers.run(
        images["serving"]["tag"],
        detach=True,
        network_mode="host",
        volumes=[f"{secrets}:{mount}:ro"],
        environment={
            "MLFLOW_TRACKING_URI": mlflow_server,
            "MLOPS_SERVING_PORT": str(port),
            "MLOPS_SERVING_MODEL": "no-such-model",
            **files,
        },
    )
    url = f"http://127.0.0.1:{port}"

    def status(path: str, token: str | None = None) -> int:
        headers = {"Authorization": f"Bearer {content[token]}"} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.time() + 90
        while not _answers(port):
            assert time.time() < deadline, container.logs().decode()[-2000:]
            time.sleep(1)
        assert status("/ready") == 503  # the probe: open, and honestly not ready (no such model)
        assert (status("/metrics"), status("/metrics", "token"), status("/metrics", "admin-token")) == (
            401,
            403,
            200,
        )
        assert "auth on: admin, feedback, predict tokens" in container.logs().decode()
    finally:
        container.remove(force=True)


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True
    except OSError:
        return False
