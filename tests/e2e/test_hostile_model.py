"""Someone who can write to the registry cannot run code in a model server or the deploy worker.

On the real MLflow server, ``flights-hostile`` gets three versions: v1 a copy of the good
serving model, v2 the same folder with an MLmodel that asks for pickle and a pickle that touches
a marker file when unpickled, v3 a skops model that allow-lists ``os.system`` in its own MLmodel
(a FunctionTransformer would call it on every request). A model server follows the name while
the ``champion`` alias is moved to v2 and v3; infra validation is asked to deploy each.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import SERVING_MODEL, ServerProcess
from pipelines import tracking
from pipelines.context import StepContext
from pipelines.errors import InfraValidationFailed
from pipelines.runner import execute_step

pytestmark = pytest.mark.e2e
HOSTILE = "flights-hostile"


class _TouchesWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _register_folder(settings, folder: Path) -> str:
    import mlflow

    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, SERVING_MODEL)) as run:
        mlflow.log_artifacts(str(folder), "model")
    client = tracking.client(settings)
    return client.create_model_version(HOSTILE, f"runs:/{run.info.run_id}/model", run.info.run_id).version


@pytest.fixture(scope="module")
def hostile(serving_home, tmp_path_factory):
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from pipelines import model_format
    from pipelines.serving.registry import download_version

    settings = serving_home["settings"]
    work = tmp_path_factory.mktemp("hostile")
    marker = work / "code-ran"
    client = tracking.client(settings)
    good = client.get_model_version(SERVING_MODEL, "1")
    tracking.register_version(settings, HOSTILE, good.source, good.run_id, dict(good.tags))
    folder = download_version(settings, SERVING_MODEL, "1", work / "cache")

    pickled = work / "pickled"
    shutil.copytree(folder, pickled)
    meta = yaml.safe_load((pickled / "MLmodel").read_text())
    meta["flavors"]["sklearn"].update(serialization_format="pickle", pickled_model="model.pkl")
    (pickled / "MLmodel").write_text(yaml.safe_dump(meta))
    (pickled / "model.pkl").write_bytes(pickle.dumps(_TouchesWhenUnpickled(marker)))

    hooked = work / "hooked"
    shutil.copytree(folder, hooked)
    pipeline = model_format.load_pipeline(folder)
    skops.io.dump(
        Pipeline([("hook", FunctionTransformer(os.system)), ("model", pipeline)]), hooked / "model.skops"
    )
    meta = yaml.safe_load((hooked / "MLmodel").read_text())
    meta["flavors"]["sklearn"]["skops_trusted_types"].append("posix.system")
    (hooked / "MLmodel").write_text(yaml.safe_dump(meta))

    versions = {
        "pickle": _register_folder(settings, pickled),
        "os.system": _register_folder(settings, hooked),
    }
    client.set_registered_model_alias(HOSTILE, "champion", "1")
    env = {**serving_home["env"], "MLOPS_SERVING_MODEL": HOSTILE}
    return {"versions": versions, "marker": marker, "env": env, "settings": settings, "work": work}


def _ready(url: str) -> dict:
    return httpx.get(f"{url}/ready", timeout=10).json()


def _refuses_champion(client, url: str, version: str, reason: str) -> None:
    """Move ``champion`` to ``version`` and wait until the server says ``reason``; v1 still serves."""
    client.set_registered_model_alias(HOSTILE, "champion", version)
    deadline = time.time() + 60
    while reason not in str(_ready(url).get("registry_error")):
        assert time.time() < deadline, _ready(url)
        time.sleep(0.3)
    assert _ready(url)["champion"]["version"] == "1"  # the old model keeps serving


def _deploy_context(settings, folder: Path, run_id: str, version: str) -> StepContext:
    """A deploy step's context for ``HOSTILE`` (the serving config with its registry name)."""
    config = yaml.safe_load(Path(settings.config_path).read_text())
    config["registry"] = {"model_name": HOSTILE, "experiment": SERVING_MODEL}
    settings = dataclasses.replace(settings, config_path=str(folder / "hostile.yaml"))
    Path(settings.config_path).write_text(yaml.safe_dump(config))
    return StepContext.create(
        dag_id="deploy", run_id=run_id, interval_end="2013-05-01", overrides={"version": version},
        settings=settings,
    )  # fmt: skip


def test_a_server_refuses_a_hostile_champion_names_why_and_keeps_serving(hostile, april_rows):
    client = tracking.client(hostile["settings"])
    server = ServerProcess(hostile["env"], hostile["work"] / "server.log").start().wait_ready()
    try:
        record = april_rows[0][0]
        for version, reason in [
            (hostile["versions"]["pickle"], "asks to be loaded as 'pickle'; only 'skops' is loaded"),
            (hostile["versions"]["os.system"], "holds types this project does not trust: ['posix.system']"),
        ]:
            _refuses_champion(client, server.url, version, reason)
            ready = _ready(server.url)
            assert f"champion v{version} cannot be served" in ready["registry_error"]
            assert "still serving v1" in ready["registry_error"]
            answer = httpx.post(f"{server.url}/predict", json={"records": [record]}, timeout=10)
            assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    finally:
        server.stop()
        client.set_registered_model_alias(HOSTILE, "champion", "1")
    assert not hostile["marker"].exists()


@pytest.mark.parametrize("kind", ["pickle", "os.system"])
def test_infra_validation_refuses_a_hostile_candidate_without_loading_it(hostile, kind):
    version = hostile["versions"][kind]
    ctx = _deploy_context(hostile["settings"], hostile["work"], f"hostile-{kind}", version)
    with pytest.raises(InfraValidationFailed, match="did not load"):
        execute_step("validate_serving", ctx, {})
    tags = tracking.client(ctx.settings).get_model_version(HOSTILE, version).tags
    assert tags["infra_validation"].startswith("failed") and "cannot be served" in tags["infra_validation"]
    assert not hostile["marker"].exists()


def test_the_infra_validation_sandbox_holds_no_secret(serving_home, tmp_path, monkeypatch):
    """The deploy worker holds the S3 keys, database URLs and the PII key; the sandbox that runs the
    candidate gets none of them, and still serves the candidate from its downloaded folder."""
    from pipelines.serving.registry import download_version
    from pipelines.steps.validate_serving import Sandbox

    secrets = {
        "AWS_SECRET_ACCESS_KEY": "s3-secret-value",
        "MLFLOW_TRACKING_PASSWORD": "mlflow-secret-value",
        "MLOPS_PII_KEY": "pii-secret-value",
        "MLOPS_PREDICTION_LOG": "postgresql://mlops:db-secret-value@db/mlops",
        "MLOPS_SERVING_TOKEN": "token-secret-value",
        "MLOPS_SERVING_ADMIN_TOKEN": "admin-token-secret-value",
        "MLOPS_SERVING_SECRET": "serving-secret-value-0123456789",
        "AIRFLOW_CONN_MLFLOW_DEFAULT": '{"password": "conn-secret-value"}',
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    settings = serving_home["settings"]
    model_dir = download_version(settings, SERVING_MODEL, "1", tmp_path / "models")
    sandbox = Sandbox("1", SERVING_MODEL, tmp_path, settings, model_dir, 0.2)
    try:
        # Until the child has exec'd, it is a copy of a worker that made itself non-dumpable (an
        # earlier validate_serving in this process): its environ then reads empty.
        deadline = time.monotonic() + 10
        while not (environ := Path(f"/proc/{sandbox.proc.pid}/environ").read_bytes()):
            assert time.monotonic() < deadline, "the sandbox never exec'd"
            time.sleep(0.05)
        for value in secrets.values():
            assert value.encode() not in environ
        assert b"MLFLOW_TRACKING_URI=sqlite:" in environ  # no registry to reach either
        with httpx.Client() as http:
            ready = sandbox.wait_ready(http, 90)
        assert ready["champion"]["version"] == "1" and ready["registry_error"] is None
    finally:
        sandbox.stop()


def test_a_version_trained_under_another_pii_key_is_refused(hostile, tmp_path, april_rows):
    """Regression: a server hashed personal fields with its own key whatever key the model's
    training data was pseudonymised with, so the model scored noise and nobody was told."""
    from pipelines import privacy
    from pipelines.settings import Settings

    settings = hostile["settings"]
    client = tracking.client(settings)
    config = yaml.safe_load(Path(Settings.from_env(hostile["env"]).config_path).read_text())
    config["dataset"]["personal_data"]["allowed_as_features"] = ["tailnum"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    good = client.get_model_version(HOSTILE, "1")
    tags = dict(good.tags)
    other = {**tags, privacy.FINGERPRINT_TAG: privacy.key_fingerprint({"MLOPS_PII_KEY": "the-pipelines-key"})}
    same = {**tags, privacy.FINGERPRINT_TAG: privacy.key_fingerprint({"MLOPS_PII_KEY": "this-servers-key"})}
    mismatched = tracking.register_version(settings, HOSTILE, good.source, good.run_id, other).version
    matching = tracking.register_version(settings, HOSTILE, good.source, good.run_id, same).version
    env = {
        **hostile["env"],
        "MLOPS_CONFIG": str(tmp_path / "config.yaml"),
        "MLOPS_PII_KEY": "this-servers-key",
    }
    server = ServerProcess(env, tmp_path / "server.log").start().wait_ready()
    try:
        _refuses_champion(client, server.url, mismatched, "another MLOPS_PII_KEY")
        deadline = time.time() + 60
        client.set_registered_model_alias(HOSTILE, "champion", matching)
        while _ready(server.url)["champion"]["version"] != matching:
            assert time.time() < deadline + 60, _ready(server.url)
            time.sleep(0.3)
        answer = httpx.post(f"{server.url}/predict", json={"records": [april_rows[0][0]]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == matching
    finally:
        server.stop()
        client.set_registered_model_alias(HOSTILE, "champion", "1")


def test_the_sandbox_owns_its_port_from_the_start_and_dies_with_its_worker(serving_home, tmp_path):
    """Regression: the port was picked free, released, then bound by the sandbox seconds later
    (another process could take it in between, and the validator would test that one); and a
    worker killed by SIGKILL left its sandbox serving for ever (it runs in a session of its own)."""
    import json
    import signal
    import socket
    import subprocess
    import sys

    from pipelines.serving.registry import download_version
    from pipelines.steps.validate_serving import Sandbox

    settings = serving_home["settings"]
    model_dir = download_version(settings, SERVING_MODEL, "1", tmp_path / "models")
    (tmp_path / "own").mkdir()
    sandbox = Sandbox("1", SERVING_MODEL, tmp_path / "own", settings, model_dir, 0.2)
    try:
        # listening before the server process has even imported anything: no window to lose it in
        socket.create_connection(("127.0.0.1", sandbox.port), timeout=1).close()
        with httpx.Client() as http:
            assert sandbox.wait_ready(http, 90)["champion"]["version"] == "1"
    finally:
        sandbox.stop()

    worker = f"""
import json, sys, time
from pathlib import Path
from pipelines.settings import Settings
from pipelines.steps.validate_serving import Sandbox
work, model = Path({str(tmp_path / "orphan")!r}), Path({str(model_dir)!r})
s = Sandbox("1", {SERVING_MODEL!r}, work, Settings.from_env(), model, 0.2)
print(json.dumps({{"pid": s.proc.pid}}), flush=True)
time.sleep(600)
"""
    (tmp_path / "orphan").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", worker], env={**os.environ, **serving_home["env"]},
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = json.loads(proc.stdout.readline())["pid"]
    os.kill(proc.pid, signal.SIGKILL)  # the worker dies without running any cleanup
    proc.wait(10)
    deadline = time.time() + 30
    while Path(f"/proc/{child}").exists() and Path(f"/proc/{child}/stat").read_text().split()[2] != "Z":
        assert time.time() < deadline, "the sandbox outlived its killed worker"
        time.sleep(0.2)


def test_model_files_rewritten_after_registration_are_refused_everywhere(hostile, april_rows, tmp_path):
    """Review 5, H-2: whoever can write the artifact store (the servers' S3 keys, the shared
    volume) could swap a registered version's ``model.skops`` for another allow-listed model, and
    every new server pod served it. The pipeline records the files' SHA-256 on the version, where
    only it writes; the server, the steps' loader and infra validation refuse other files."""
    import mlflow
    import skops.io

    from pipelines import model_format
    from pipelines.errors import UntrustedModel
    from pipelines.serving.registry import download_version

    settings, client = hostile["settings"], tracking.client(hostile["settings"])
    registered = client.get_model_version(SERVING_MODEL, "1").tags
    assert len(registered[model_format.DIGEST_TAG]) == 64  # the register step recorded it
    folder = download_version(settings, SERVING_MODEL, "1", tmp_path / "cache")
    assert model_format.folder_digest(folder) == registered[model_format.DIGEST_TAG]
    # a copy of v1 with v1's tags, in a run of its own: the same files give the same digest
    with mlflow.start_run(experiment_id=tracking.experiment_id(settings, SERVING_MODEL)) as run:
        mlflow.log_artifacts(str(folder), "model")
    version = client.create_model_version(
        HOSTILE, f"runs:/{run.info.run_id}/model", run.info.run_id, tags=dict(registered)
    ).version
    assert model_format.load_uri(settings, f"models:/{HOSTILE}/{version}") is not None

    # the swap: v3's model (shuffled labels, types the project trusts) over this version's file
    swapped = tmp_path / "swap" / "model.skops"
    swapped.parent.mkdir()
    skops.io.dump(model_format.load_uri(settings, f"models:/{SERVING_MODEL}/3"), swapped)
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.log_artifact(str(swapped), "model")
    with pytest.raises(UntrustedModel, match="not the ones the pipeline registered"):
        model_format.load_uri(settings, f"models:/{HOSTILE}/{version}")

    server = ServerProcess(hostile["env"], hostile["work"] / "swap-server.log").start().wait_ready()
    try:
        _refuses_champion(client, server.url, version, "not the ones the pipeline registered")
        answer = httpx.post(f"{server.url}/predict", json={"records": [april_rows[0][0]]}, timeout=10)
        assert answer.status_code == 200 and answer.json()["model_version"] == "1"
    finally:
        server.stop()
        client.set_registered_model_alias(HOSTILE, "champion", "1")

    ctx = _deploy_context(settings, tmp_path, "swapped", version)
    with pytest.raises(InfraValidationFailed, match="not the ones the pipeline registered"):
        execute_step("validate_serving", ctx, {})
