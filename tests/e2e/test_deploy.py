"""Deployment against a running model server and the real MLflow server.

Infra validation in a sandbox process, canary rollouts decided by the test fixed in
advance (worse challenger -> abort, better -> promote), rollback, and the deploy DAG
through Airflow with its sensor waiting on real traffic and feedback.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import httpx
import pendulum
import pytest
import yaml

from conftest import SERVING_MODEL, ServerProcess, reset_deployment
from pipelines import deploy, tracking
from pipelines.context import StepContext
from pipelines.errors import InfraValidationFailed
from pipelines.runner import execute_step

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def config_with(serving_home, tmp_path: Path, **rollout) -> Path:
    """The serving config with deploy settings changed (e.g. a large effect for a small sample)."""
    data = yaml.safe_load(Path(serving_home["config"]).read_text())
    for key in ("latency_budget_ms", "infra_memory_limit_mb", "infra_concurrency"):  # deploy's own
        if key in rollout:
            data["deploy"][key] = rollout.pop(key)
    data["deploy"]["rollout"].update(rollout)
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def context(
    serving_home, config: Path | None = None, run_id: str = "deploy-test", **overrides
) -> StepContext:
    settings = serving_home["settings"]
    if config is not None:
        settings = dataclasses.replace(settings, config_path=str(config))
    return StepContext.create(
        dag_id="deploy", run_id=run_id, interval_start=None, interval_end="2013-05-01",
        overrides=overrides, settings=settings,
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(serving_home, tmp_path_factory):
    reset_deployment(serving_home["settings"])
    proc = ServerProcess(serving_home["env"], tmp_path_factory.mktemp("deploy-server") / "server.log").start()
    yield proc
    proc.stop()


def wait_ready(url: str, timeout: float = 30, **expected) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        body = httpx.get(f"{url}/ready").json()
        state = {
            "champion": (body.get("champion") or {}).get("version"),
            "challenger": (body.get("challenger") or {}).get("version"),
            "strategy": body["strategy"],
        }
        if all(state[k] == v for k, v in expected.items()):
            return
        time.sleep(0.2)
    raise AssertionError(f"server never reached {expected}: {body}")


def drive(url: str, rows, stop: threading.Event, rows_per_request: int = 5) -> dict[str, int]:
    """Users with sticky routing keys send flights; the true labels come back as feedback."""
    records, labels = rows
    served: dict[str, int] = {}
    i = 0
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set() and i * rows_per_request < len(records):
            lo = (i * rows_per_request) % len(records)
            body = http.post(
                "/predict", json={"records": records[lo : lo + rows_per_request], "routing_key": f"user-{i}"}
            ).json()
            feedback = [
                {"request_id": body["request_id"], "row": r, "label": int(labels[lo + r])}
                for r in range(len(body["predictions"]))
            ]
            http.post("/feedback", json={"feedback": feedback}).raise_for_status()
            served[body["route"]] = served.get(body["route"], 0) + len(feedback)
            i += 1
    return served


def canary(serving_home, server, april_rows, tmp_path, *, champion: str, challenger: str):
    """Run validate_serving -> start_rollout -> traffic -> analyse -> conclude through the steps."""
    settings = serving_home["settings"]
    reset_deployment(settings, champion=champion)
    config = config_with(serving_home, tmp_path, strategy="canary", share=0.5, min_detectable_effect=0.15)
    ctx = context(serving_home, config, run_id=f"canary-{challenger}-vs-{champion}", version=challenger)
    validated = execute_step("validate_serving", ctx, {})
    assert validated["status"] == "passed" and validated["max_abs_diff"] < 1e-6
    started = execute_step("start_rollout", ctx, {"validate_serving": validated})
    assert started["strategy"] == "canary" and not started["decided"]
    n = started["policy"]["sample_size"]
    assert 50 < n < 1000, n  # fixed before traffic moves, from baseline error, effect, alpha and power
    wait_ready(server.url, champion=champion, challenger=challenger, strategy="canary")

    waiting = execute_step("analyse_rollout", ctx, {"start_rollout": started})
    assert waiting["status"] == "waiting"
    stop = threading.Event()
    served = {}
    feeder = threading.Thread(target=lambda: served.update(drive(server.url, april_rows, stop)))
    feeder.start()
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            verdict = execute_step("analyse_rollout", ctx, {"start_rollout": started})
            if verdict["status"] == "decided":
                break
            time.sleep(1)
    finally:
        stop.set()
        feeder.join()
    assert verdict["status"] == "decided", verdict
    assert verdict["labelled_champion"] >= n and verdict["labelled_challenger"] >= n
    concluded = execute_step("conclude_rollout", ctx, {"start_rollout": started, "analyse_rollout": verdict})
    return verdict, concluded


def test_infra_validation_passes_a_servable_model(serving_home, monkeypatch):
    """...and hands on the reason a person must approve, set at registration on a wide swing.

    The worker, which holds the credentials, never deserialises the candidate (review 3, M2: it
    loaded it in-process for the reference answers, right after the sandbox), and its /proc files
    are not readable by the sandbox's user (non-dumpable)."""
    import ctypes

    from mlops_airflow.approval import route_approval
    from pipelines import model_format

    def refuse(*args, **kwargs):
        raise AssertionError("the deploy worker deserialised the candidate")

    monkeypatch.setattr(model_format, "load_pipeline", refuse)
    client = tracking.client(serving_home["settings"])
    reason = "roc_auc 0.80 vs champion 0.66: a change of +0.14, wider than the swing band ±0.1"
    client.set_model_version_tag(SERVING_MODEL, "2", "approval.reason", reason)
    try:
        result = execute_step("validate_serving", context(serving_home, version="2"), {})
    finally:
        client.delete_model_version_tag(SERVING_MODEL, "2", "approval.reason")
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE: 0, /proc/<pid>/* is root's
    assert result["approval_reason"] == reason

    class TI:
        def xcom_pull(self, task_ids):
            return result

    run = type("Run", (), {"dag_id": "deploy", "run_id": "swing-test"})()
    assert route_approval(False, ti=TI(), dag_run=run) == "approve"
    assert result["status"] == "passed"
    assert result["version"] == "2" and result["runtime"] == "lean-hgb"
    assert result["max_abs_diff"] < 1e-6 and result["rows_checked"] > 10
    assert result["p95_ms"] < 100
    # then 8 clients at once (the default), each answer its own row's: 50 requests in all
    assert result["concurrent_requests"] == 50 and result["concurrent_p95_ms"] > 0
    assert 50 < result["peak_rss_mb"] < 1024  # a real server's peak, under the chart's 1Gi limit
    tags = tracking.client(serving_home["settings"]).get_model_version(SERVING_MODEL, "2").tags
    assert tags["infra_validation"] == "passed"
    assert tags["infra_validation.peak_rss_mb"] == f"{result['peak_rss_mb']:.0f}"


def test_infra_validation_rejects_a_model_that_cannot_load(serving_home, tmp_path):
    """A version whose model file is missing never reaches traffic."""
    import mlflow

    settings = serving_home["settings"]
    reset_deployment(settings)
    from pipelines.serving.registry import download_version

    good = download_version(settings, SERVING_MODEL, "1", tmp_path / "cache")
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    for model_file in broken.glob("model.*"):
        model_file.unlink()
    tracking.client(settings)
    exp = tracking.experiment_id(settings, SERVING_MODEL)
    with mlflow.start_run(experiment_id=exp) as run:
        mlflow.log_artifacts(str(broken), "model")
    client = tracking.client(settings)
    version = client.create_model_version(SERVING_MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(SERVING_MODEL, "challenger", version.version)
    try:
        with pytest.raises(InfraValidationFailed, match=r"did not load|exited"):
            execute_step("validate_serving", context(serving_home), {})
        tags = client.get_model_version(SERVING_MODEL, version.version).tags
        assert tags["infra_validation"].startswith("failed")
        assert deploy.aliases(settings, SERVING_MODEL)["champion"] == "1"
    finally:
        reset_deployment(settings)


def test_infra_validation_rejects_a_model_over_the_latency_budget(serving_home, tmp_path):
    config = config_with(serving_home, tmp_path, latency_budget_ms=0.01)
    with pytest.raises(InfraValidationFailed, match="too slow: p95"):
        execute_step("validate_serving", context(serving_home, config, version="2"), {})


def test_infra_validation_rejects_a_model_over_the_memory_ceiling(serving_home, tmp_path):
    """A server whose peak memory is over ``deploy.infra_memory_limit_mb`` (the pods' limit) would
    be OOM-killed in the cluster: it is stopped here, and the champion is untouched."""
    settings = serving_home["settings"]
    reset_deployment(settings)
    config = config_with(serving_home, tmp_path, infra_memory_limit_mb=40)  # any Python server is over
    with pytest.raises(InfraValidationFailed, match=r"took \d+ MB at peak, over the memory ceiling of 40 MB"):
        execute_step("validate_serving", context(serving_home, config, version="2"), {})
    tags = tracking.client(settings).get_model_version(SERVING_MODEL, "2").tags
    assert tags["infra_validation"].startswith("failed: the server took")
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "1"}


def test_canary_of_a_worse_challenger_is_aborted(serving_home, server, april_rows, tmp_path):
    settings = serving_home["settings"]
    verdict, concluded = canary(serving_home, server, april_rows, tmp_path, champion="1", challenger="3")
    assert verdict["decision"] == "abort", verdict
    assert verdict["error_rate_challenger"] > verdict["error_rate_champion"] and verdict["p_value"] < 0.05
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "1"}
    assert deploy.current_policy(settings, SERVING_MODEL).strategy == "direct"
    wait_ready(server.url, champion="1", challenger=None, strategy="direct")
    run = tracking.client(settings).search_runs(
        [tracking.experiment_id(settings, SERVING_MODEL)],
        filter_string="tags.`mlops.run_key` = 'deploy/canary-3-vs-1'",
    )[0]
    assert run.data.tags["deploy.decision"] == "abort"
    assert run.data.metrics["rollout_p_value"] < 0.05
    assert concluded["aborted"] == "3"
    report = Path(concluded["report_uri"]).read_text()
    assert "abort" in report and "data:image/png;base64," in report and "two-proportion" in report
    assert "rollout/rollout.html" in {
        f.path for f in tracking.client(settings).list_artifacts(run.info.run_id, "rollout")
    }


def test_canary_of_a_better_challenger_is_promoted_and_rollback_restores(
    serving_home, server, april_rows, tmp_path
):
    settings = serving_home["settings"]
    verdict, concluded = canary(serving_home, server, april_rows, tmp_path, champion="3", challenger="2")
    assert verdict["decision"] == "promote", verdict
    assert concluded == {**concluded, "champion": "2", "previous": "3"}
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "2", "previous": "3"}
    wait_ready(server.url, champion="2", strategy="direct")

    ctx = context(serving_home, run_id="rollback-test")
    result = execute_step("rollback", ctx, {})
    assert result["champion"] == "3" and result["rolled_back_from"] == "2"
    wait_ready(server.url, champion="3")
    reset_deployment(settings)


def test_deploy_dag_runs_a_canary_through_airflow(serving_home, server, april_rows, airflow_db, tmp_path):
    """The DAG's sensor waits while users send traffic and feedback, then the verdict is applied."""
    from airflow.dag_processing.dagbag import DagBag

    settings = serving_home["settings"]
    reset_deployment(settings, champion="1")
    config = config_with(serving_home, tmp_path, strategy="canary", share=0.5, min_detectable_effect=0.15)
    stop = threading.Event()

    def users() -> None:  # start sending once the rollout is live
        deadline = time.time() + 120
        while not stop.is_set() and time.time() < deadline:
            if deploy.current_policy(settings, SERVING_MODEL).strategy == "canary":
                wait_ready(server.url, challenger="3", strategy="canary")
                drive(server.url, april_rows, stop)
                return
            time.sleep(0.5)

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**serving_home["env"], "MLOPS_CONFIG": str(config)}.items():
            mp.setenv(key, value)
        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert bag.import_errors == {}
        dag = bag.dags["deploy"]
        feeder = threading.Thread(target=users)
        feeder.start()
        try:
            run = dag.test(logical_date=pendulum.now("UTC"), run_conf={"version": "3"})
        finally:
            stop.set()
            feeder.join()
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert states == {
        **dict.fromkeys(
            ["validate_serving", "route_approval", "start_rollout", "analyse_rollout", "conclude_rollout"],
            "success",
        ),
        "approve": "skipped",  # no swing recorded, approval off: straight to the rollout
    }
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "1"}
    tags = tracking.client(settings).get_model_version(SERVING_MODEL, "3").tags
    assert tags["deploy.decision"].startswith("aborted: challenger significantly worse")


def test_deploy_dag_with_approval_waits_for_a_person(serving_home, tmp_path):
    """With approval on, an Airflow HITL approval task sits between infra validation and the rollout."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    data = yaml.safe_load(Path(serving_home["config"]).read_text())
    data["deploy"]["approval"] = True
    config = tmp_path / "approval.yaml"
    config.write_text(yaml.safe_dump(data))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLOPS_CONFIG", str(config))
        dag = DagBag(dag_folder=str(ROOT / "dags")).dags["deploy"]
    approve = dag.get_task("approve")
    assert isinstance(approve, ApprovalOperator)
    assert approve.upstream_task_ids == {"route_approval"}
    assert dag.get_task("route_approval").op_kwargs == {"always": True}  # every rollout asks
    assert "start_rollout" in approve.downstream_task_ids


def test_mlops_run_deploy_waits_for_a_person_then_polls_the_canary_to_its_verdict(
    serving_home, server, april_rows, tmp_path
):
    """The plain runner knows the spec's approval and polling points, as the DAG does: with
    ``deploy.approval`` on it stops before the rollout (exit 99, nothing moved); ``--approve``
    records who approved, starts the canary and polls it while users send traffic, then promotes."""
    import getpass
    import os
    import subprocess
    import sys

    from pipelines import audit

    settings = serving_home["settings"]
    reset_deployment(settings, champion="3")
    config = config_with(serving_home, tmp_path, strategy="canary", share=0.5, min_detectable_effect=0.15,
                         poke_seconds=1)  # fmt: skip
    data = yaml.safe_load(config.read_text())
    data["deploy"]["approval"] = True
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, **serving_home["env"], "MLOPS_CONFIG": str(config)}
    command = [sys.executable, "-m", "pipelines.cli", "run", "deploy", "--dag-id", "deploy",
               "--interval-end", "2013-05-01", "--param", "version=2"]  # fmt: skip

    held = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert held.returncode == 99, held.stderr[-2000:]
    assert "waiting for a person: deploy.approval is on" in held.stdout and "--approve" in held.stdout
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "3"}  # nothing moved
    assert deploy.current_policy(settings, SERVING_MODEL).strategy == "direct"

    approved = subprocess.Popen([*command, "--approve"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    stop, feeder = threading.Event(), None
    try:
        # infra validation (a sandbox server) runs first: on a busy machine that takes a while
        wait_ready(server.url, timeout=240, champion="3", challenger="2", strategy="canary")
        feeder = threading.Thread(target=drive, args=(server.url, april_rows, stop))
        feeder.start()
        out, _ = approved.communicate(timeout=300)
    finally:
        stop.set()
        approved.kill()
        if feeder is not None:
            feeder.join()
    assert approved.returncode == 0, out[-3000:]
    assert "analyse_rollout waiting:" in out  # polled, with its progress shown
    assert deploy.aliases(settings, SERVING_MODEL) == {"champion": "2", "previous": "3"}, out[-3000:]
    approvals = audit.events(settings, model=SERVING_MODEL, kinds=[audit.APPROVED])
    assert approvals and approvals[-1]["details"]["by"] == getpass.getuser()
    assert approvals[-1]["details"]["reason"].startswith("deploy.approval is on")
    reset_deployment(settings)
