"""Kubernetes mode: every pod the DAGs would launch, rendered and validated; step pods run for real.

There is no cluster here. The KubernetesPodOperator of each task renders its pod (``dry_run``),
``kubernetes-validate`` checks it against the Kubernetes 1.37 schema, and ``podman kube play``
runs rendered step pods, their results read from the XCom sidecar as the operator reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import (
    ApiClient,
    V1ContainerState,
    V1ContainerStateTerminated,
    V1ContainerStatus,
    V1Pod,
    V1PodStatus,
)

from mlops_airflow.execution import load_execution, step_arguments

ROOT = Path(__file__).resolve().parents[2]
KUBE_VERSION = "1.37.0"
# KubernetesPodOperator takes the XCom sidecar's image and resources from the Kubernetes connection.
SIDECAR_CONNECTION = json.dumps(
    {
        "conn_type": "kubernetes",
        "extra": {
            "xcom_sidecar_container_image": "python:3.11-slim",
            "xcom_sidecar_container_resources": json.dumps(
                {"requests": {"cpu": "1m", "memory": "10Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
            ),
        },
    }
)


def chart_kubernetes_connection() -> str:
    """The Kubernetes connection the Helm chart gives Airflow (values.yaml, airflow.extraEnv)."""
    values = yaml.safe_load((ROOT / "helm" / "mlops" / "values.yaml").read_text())
    env = yaml.safe_load(values["airflow"]["extraEnv"].replace("{{ .Release.Name }}", "mlops"))
    return next(e["value"] for e in env if e["name"] == "AIRFLOW_CONN_KUBERNETES_DEFAULT")


def cpu(value: str) -> float:
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def memory(value: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return float(value[:-2]) * units[value[-2:]] if value[-2:] in units else float(value)


def manifest(op) -> dict:
    pod = op.build_pod_request_obj(context=None, dry_run=True)
    return ApiClient().sanitize_for_serialization(pod)


@pytest.fixture
def kubernetes_mode(tmp_path, monkeypatch):
    """The DAGs parsed in kubernetes mode with an execution config like the chart's."""
    config = tmp_path / "execution.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mode": "kubernetes",
                "image": "registry.example/mlops-step:0.1.0",
                "env": {
                    "MLFLOW_TRACKING_URI": "http://mlops-mlflow:5000",
                    "MLFLOW_TRACKING_USERNAME": "pipeline",
                },
                "kubernetes": {
                    "namespace": "mlops",
                    "service_account": "mlops-steps",
                    "env_from": [{"secretRef": {"name": "mlops-stores"}}],
                    "env_secrets": {
                        "MLFLOW_TRACKING_PASSWORD": {"name": "mlops-mlflow-auth", "key": "pipeline-password"}
                    },
                    "image_pull_secrets": ["registry"],
                },
            }
        )
    )
    monkeypatch.setenv("MLOPS_EXECUTION_CONFIG", str(config))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", chart_kubernetes_connection())
    return config


def test_every_step_pod_of_every_dag_is_a_valid_locked_down_pod(kubernetes_mode):
    from airflow.dag_processing.dagbag import DagBag

    from mlops_airflow.pods import StepPodOperator, step_pod_operator

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    operators = [t for dag in bag.dags.values() for t in dag.tasks if isinstance(t, StepPodOperator)]
    others = [t for dag in bag.dags.values() for t in dag.tasks if not isinstance(t, StepPodOperator)]
    # polled steps stay sensors (each poke launches the same kind of pod); the approval route and
    # the person's answer run in Airflow itself, no pod
    assert sorted(t.task_id for t in others) == ["analyse_rollout", "approve", "route_approval"]
    operators.append(step_pod_operator("analyse_rollout", {}, task_id="analyse_rollout_poke"))
    assert len(operators) >= 15

    requests = {}
    for op in operators:
        pod = manifest(op)
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        spec, (base, sidecar) = pod["spec"], pod["spec"]["containers"]
        assert pod["metadata"]["namespace"] == "mlops"
        assert base["image"] == "registry.example/mlops-step:0.1.0"
        assert base["args"][0] == op.step  # the image's entrypoint is `mlops step`
        assert spec["serviceAccountName"] == "mlops-steps"
        assert spec["automountServiceAccountToken"] is False
        assert spec["imagePullSecrets"] == [{"name": "registry"}]
        assert (
            spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
        )
        assert not spec.get("hostNetwork")
        for container in (base, sidecar):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
        assert base["envFrom"] == [{"secretRef": {"name": "mlops-stores"}}]
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlops-mlflow:5000"} in base["env"]
        # the pipeline's MLflow password, one key of the auth Secret: never the admin's
        assert {
            "name": "MLFLOW_TRACKING_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "mlops-mlflow-auth", "key": "pipeline-password"}},
        } in base["env"]
        mounts = {m["mountPath"] for m in base["volumeMounts"]}
        assert {"/tmp", "/var/lib/mlops", "/airflow/xcom"} <= mounts  # writable scratch on a read-only image
        assert op.skip_on_exit_code == [99] or op.skip_on_exit_code == {99}
        requests[op.step] = base["resources"]["requests"]
    assert cpu(requests["train"]["cpu"]) > cpu(requests["ingest"]["cpu"])
    assert memory(requests["train"]["memory"]) > memory(requests["ingest"]["memory"])


def test_a_bad_execution_config_names_the_key(tmp_path, monkeypatch):
    config = tmp_path / "execution.yaml"
    config.write_text(
        yaml.safe_dump({"mode": "kubernets", "resources": {"train": {"requests": {"gpus": "1"}}}})
    )
    monkeypatch.setenv("MLOPS_EXECUTION_CONFIG", str(config))
    with pytest.raises(ValueError) as error:
        load_execution()
    message = str(error.value)
    assert str(config) in message
    assert "mode: Input should be 'local', 'subprocess', 'docker' or 'kubernetes'" in message
    assert "resources.train.requests.gpus" in message

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))  # the DAGs show it as their import error
    assert bag.import_errors and all("mode: Input should be" in e for e in bag.import_errors.values())


def test_a_step_that_fails_on_bad_input_is_not_retried():
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from mlops_airflow.pods import base_exit_code, not_retryable

    def finished(code: int) -> V1Pod:
        state = V1ContainerState(terminated=V1ContainerStateTerminated(exit_code=code))
        status = V1ContainerStatus(
            name="base", state=state, image="i", image_id="", ready=False, restart_count=0
        )
        return V1Pod(status=V1PodStatus(phase="Failed", container_statuses=[status]))

    assert base_exit_code(finished(3)) == 3 and base_exit_code(V1Pod()) is None
    failure = AirflowException("Pod mlops-validate-x returned a failure.")  # the operator's own error
    error = not_retryable("validate", failure, finished(3))
    assert isinstance(error, AirflowFailException) and "mlops step validate stopped on bad input" in str(
        error
    )
    assert not_retryable("validate", failure, finished(1)) is failure  # anything else: Airflow retries


def kube_play(pod: dict, folder: Path, timeout: float = 300) -> tuple[dict, str]:
    """Run one rendered pod with podman; the step's result from the XCom sidecar, and its log."""
    path = folder / f"{pod['metadata']['name']}.yaml"
    path.write_text(yaml.safe_dump(pod))
    subprocess.run(
        ["podman", "kube", "play", "--network", "host", str(path)], check=True, capture_output=True
    )
    base, sidecar = (f"{pod['metadata']['name']}-{c['name']}" for c in pod["spec"]["containers"])
    try:
        deadline = time.time() + timeout
        while True:
            state = subprocess.run(
                ["podman", "inspect", base, "--format", "{{.State.Status}} {{.State.ExitCode}}"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            if state[0] == "exited":
                break
            assert time.time() < deadline, f"pod {base} still {state} after {timeout}s"
            time.sleep(1)
        log = subprocess.run(["podman", "logs", base], capture_output=True, text=True).stderr
        assert state[1] == "0", log[-3000:]
        # exactly what KubernetesPodOperator does: exec into the sidecar and read the file
        result = subprocess.run(
            ["podman", "exec", sidecar, "cat", "/airflow/xcom/return.json"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return json.loads(result), log
    finally:
        subprocess.run(["podman", "kube", "down", str(path)], capture_output=True)


def test_rendered_step_pods_run_with_podman_kube_play(images, shared_store, tmp_path, monkeypatch):
    if not shutil.which("podman"):
        if os.environ.get("CI"):
            pytest.fail("podman is needed to run rendered pods (make container-engine)")
        pytest.skip("podman is not installed")
    from mlops_airflow.pods import step_pod_operator

    config = tmp_path / "execution.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mode": "kubernetes",
                "image": images["step"]["tag"],
                "image_pull_policy": "Never",  # local image: nothing to pull
                "env": {
                    "MLOPS_ARTIFACT_ROOT": "/mlops/artifacts",
                    "MLFLOW_TRACKING_URI": "sqlite:////mlops/mlflow.db",
                },
                "kubernetes": {  # the shared store: a PVC in a cluster, a host folder here
                    "namespace": "mlops",
                    "volumes": [
                        {"name": "store", "hostPath": {"path": str(shared_store), "type": "Directory"}}
                    ],
                    "volume_mounts": [{"name": "store", "mountPath": "/mlops"}],
                },
            }
        )
    )
    monkeypatch.setenv("MLOPS_EXECUTION_CONFIG", str(config))
    monkeypatch.setenv("AIRFLOW_CONN_KUBERNETES_DEFAULT", SIDECAR_CONNECTION)
    run = {"dag_id": "training", "run_id": "pod-1", "interval_start": None, "interval_end": "2013-02-01",
           "overrides": {"window_months": 1}}  # fmt: skip

    results: dict[str, dict] = {}
    for step in ("ingest", "validate"):
        op = step_pod_operator(step, {})
        inputs = {"ingest": results["ingest"]} if step == "validate" else {}
        op.arguments = step_arguments(step, run, inputs, "/airflow/xcom/return.json")
        pod = manifest(op)
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)
        results[step], log = kube_play(pod, tmp_path)
        assert f"step {step} finished" in log
    assert results["ingest"]["snapshot_uri"].startswith("/mlops/artifacts/training/pod-1/ingest/")
    assert (shared_store / "artifacts" / "training" / "pod-1" / "ingest" / "snapshot.parquet").is_file()
    assert results["validate"]["passed"] is True
    owner = (shared_store / "artifacts" / "training").stat().st_uid
    assert owner == 10001  # written by the image's unprivileged user
