"""Faults: the registry goes away mid-run or under the model server; a writer dies mid-write.

Each test runs the real parts: its own MLflow server process (killed with SIGKILL and started
again on the same port and store), ``mlops step`` as Airflow runs it (the exit code is what
Airflow's retry policy sees), and ``mlops serve`` processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ServerProcess, dataset_config, free_port, wait_http
from mlops_demo.stack import mlflow_server_cmd

pytestmark = pytest.mark.e2e
MODEL = "flights-faults"


class Registry:
    """An MLflow server that can be killed and brought back on the same port and store."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Registry:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.home / "mlflow.log", "ab") as out:
            self.proc = subprocess.Popen(
                mlflow_server_cmd(self.home, self.port, env),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_http(f"{self.url}/health", 120)
        return self

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = Registry(tmp_path_factory.mktemp("faults-registry")).start()
    yield reg
    if reg.proc.poll() is None:
        reg.kill()


@pytest.fixture(scope="module")
def evaluated(registry, flights_frame, tmp_path_factory):
    """ingest -> evaluate done for one run; the inputs `register` needs, and the step's environment."""
    from pipelines.context import StepContext
    from pipelines.pipeline import TRAINING
    from pipelines.runner import execute_step

    home = tmp_path_factory.mktemp("faults")
    source = home / "flights.parquet"
    flights_frame.to_parquet(source)
    config = dataset_config(home, str(source), **{"registry.model_name": MODEL, "registry.experiment": MODEL})
    env = {"MLFLOW_TRACKING_URI": registry.url, "MLOPS_HOME": str(home), "MLOPS_CONFIG": str(config)}
    context = {"dag_id": "training", "run_id": "faults-1", "interval_end": "2013-04-01"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("MLOPS_ARTIFACT_ROOT", raising=False)
        ctx = StepContext.create(**context)
        results: dict = {}
        for spec in TRAINING[:-1]:  # all but register
            results[spec.name] = execute_step(spec.name, ctx, {n: results[n] for n in spec.inputs})
    inputs = {name: results[name] for name in TRAINING[-1].inputs}
    return {"env": env, "context": context, "inputs": inputs, "home": home}


def mlops_step(step: str, evaluated: dict, try_number: int) -> subprocess.CompletedProcess:
    """``mlops step`` exactly as the subprocess/container modes run it."""
    inputs = evaluated["home"] / "inputs.json"
    inputs.write_text(json.dumps(evaluated["inputs"]))
    context = {**evaluated["context"], "try_number": try_number}
    env = {
        **os.environ,
        **evaluated["env"],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",  # fail within seconds, let Airflow do the retrying
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    env.pop("MLOPS_ARTIFACT_ROOT", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "step", step, "--context", json.dumps(context),
           "--inputs", f"@{inputs}"]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_registry_killed_mid_run_register_fails_retryably_then_registers_exactly_once(registry, evaluated):
    from mlflow import MlflowClient

    registry.kill()  # the DAG is between evaluate and register
    first = mlops_step("register", evaluated, try_number=1)
    assert first.returncode == 1, first.stderr[-2000:]  # 1: Airflow retries (3 would mean "never retry")
    assert "Connection refused" in first.stderr or "Max retries exceeded" in first.stderr

    registry.start()  # back, same store
    second = mlops_step("register", evaluated, try_number=2)
    assert second.returncode == 0, second.stderr[-2000:]
    third = mlops_step("register", evaluated, try_number=3)  # a retry after success (worker lost)
    assert third.returncode == 0, third.stderr[-2000:]
    assert json.loads(third.stdout.strip().splitlines()[-1])["created"] is False

    client = MlflowClient(tracking_uri=registry.url, registry_uri=registry.url)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert [v.version for v in versions] == ["1"]  # exactly one new version
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"


def test_server_keeps_serving_when_the_registry_goes_away(registry, evaluated, april_rows):
    records, _ = april_rows
    env = {
        "MLFLOW_TRACKING_URI": registry.url,
        "MLOPS_SERVING_MODEL": MODEL,
        "MLOPS_HOME": str(evaluated["home"]),
    }
    warm = ServerProcess(env, evaluated["home"] / "warm.log").start()
    cold = None
    try:
        assert _predict(warm.url, records[:3], wait=30)["model_version"] == "1"
        registry.kill()
        time.sleep(4)  # polls fail within seconds: the watcher does not wait out MLflow's retries
        for i in range(20):  # the loaded champion keeps answering
            assert _predict(warm.url, records[i : i + 2])["model_version"] == "1"
        status, body = _get(f"{warm.url}/ready")
        assert status == 200 and "registry unreachable" in body["registry_error"]

        cold = ServerProcess(env, evaluated["home"] / "cold.log").start()  # a new replica, no registry
        deadline = time.time() + 30  # its first poll must fail first (slower on a busy machine)
        status, body = _get(f"{cold.url}/ready")
        while body.get("registry_error") is None and time.time() < deadline:
            time.sleep(0.5)
            status, body = _get(f"{cold.url}/ready")
        assert status == 503 and body["ready"] is False and "registry unreachable" in body["registry_error"]
        assert cold.proc.poll() is None  # alive, not crashed
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            _predict(cold.url, records[:1])
        assert not_ready.value.code == 503

        registry.start()  # the registry comes back: the new replica loads and serves
        assert _predict(cold.url, records[:1], wait=60)["model_version"] == "1"
        status, body = _get(f"{warm.url}/ready")
        assert status == 200
    finally:
        warm.stop()
        if cold:
            cold.stop()


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _predict(url: str, records: list[dict], wait: float = 0) -> dict:
    body = json.dumps({"records": records}).encode()
    deadline = time.time() + wait
    while True:
        request = urllib.request.Request(
            f"{url}/predict", data=body, headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.time() > deadline:
                raise
            time.sleep(0.3)


WRITER = textwrap.dedent(
    """
    import sys, numpy as np, pandas as pd
    from pipelines import storage
    target = sys.argv[1]
    frame = pd.DataFrame(np.random.default_rng(0).normal(size=(400_000, 8)), columns=list("abcdefgh"))
    print("ready", flush=True)
    while True:
        storage.write_parquet(target, frame)
    """
)


def test_a_writer_killed_mid_write_never_leaves_a_half_artifact(tmp_path):
    """SIGKILL a process rewriting an artifact, at many moments: the artifact is always whole."""
    target = tmp_path / "step" / "snapshot.parquet"
    for attempt in range(8):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.15 + 0.11 * attempt)  # land inside different phases of the write
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if target.exists():  # absent (killed before the first rename) or complete
            assert pq.read_metadata(target).num_rows == 400_000, f"attempt {attempt}"
    assert target.exists()
    leftovers = [p.name for p in target.parent.iterdir() if p != target]
    assert all(".tmp-" in name for name in leftovers)  # only temp names, never read by a step
