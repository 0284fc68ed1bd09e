"""Mode ``kubernetes``: each step a pod of the step image, launched by KubernetesPodOperator.

The pod runs ``mlops step <name>`` (the image's entrypoint) with the run context and the
upstream results as arguments, writes its JSON result to ``/airflow/xcom/return.json``, and the
operator's sidecar hands it back as the task's XCom. Artifacts go to the shared store
(``MLOPS_ARTIFACT_ROOT``, S3-compatible in a cluster), never through XCom. Exit code 99 skips
the task, exit code 3 (bad input or config) fails it without retries, anything else is
retried by Airflow.

Every pod runs as the image's unprivileged user with a read-only root filesystem, no
privilege escalation, no capabilities and no service-account token; ``/tmp`` and the step's
home are emptyDirs. Requests and limits come per step from the execution config.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from kubernetes.client import models as k8s

from mlops_airflow.execution import STEP_UID, Execution, load_execution, step_arguments
from mlops_airflow.task_context import finish, run_context
from pipelines.settings import DEFAULT_CONFIG

XCOM_PATH = "/airflow/xcom/return.json"
POD_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "runAsUser": STEP_UID,
    "runAsGroup": STEP_UID,
    "fsGroup": STEP_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY_CONTEXT = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
SCRATCH = {"tmp": "/tmp", "mlops-home": "/var/lib/mlops"}  # writable emptyDirs on a read-only image


def not_retryable(step: str, error: Exception, pod: Any) -> Exception:
    """The error to raise for a failed step pod: exit code 3 (bad input or config) never retries."""
    from pipelines.cli import EXIT_NOT_RETRYABLE

    if base_exit_code(pod) == EXIT_NOT_RETRYABLE:
        return AirflowFailException(
            f"mlops step {step} stopped on bad input or config (exit 3); "
            "the pod's log above names the problem"
        )
    return error


def base_exit_code(pod: Any, container: str = "base") -> int | None:
    """The exit code of the step's container in a finished pod, if it terminated."""
    for status in getattr(getattr(pod, "status", None), "container_statuses", None) or []:
        if status.name == container and status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


class StepPodOperator(KubernetesPodOperator):
    """KubernetesPodOperator that runs one pipeline step and returns its JSON result."""

    template_fields = (*KubernetesPodOperator.template_fields, "step_inputs")

    def __init__(self, *, step: str, step_inputs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        from pipelines.cli import EXIT_SKIPPED

        kwargs.setdefault("skip_on_exit_code", EXIT_SKIPPED)
        super().__init__(arguments=[step], do_xcom_push=True, **kwargs)
        self.step = step
        self.step_inputs = step_inputs or {}

    def set_step_arguments(self, context: dict[str, Any]) -> None:
        """Fill in the arguments of ``mlops step`` from the Airflow context and the resolved inputs."""

        self.arguments = step_arguments(self.step, run_context(context), self.step_inputs, XCOM_PATH)

    def execute(self, context: Any) -> Any:

        self.set_step_arguments(context)
        return finish(super().execute(context) or {}, context)

    def cleanup(self, pod: k8s.V1Pod, remote_pod: k8s.V1Pod) -> None:
        try:
            super().cleanup(pod, remote_pod)
        except AirflowException as exc:
            error = not_retryable(self.step, exc, remote_pod)
            if error is exc:
                raise
            raise error from exc


def _pod_template(cfg: Execution) -> dict[str, Any]:
    """Volumes, env sources and scheduling from the config, as a pod the operator's own fields extend."""
    k = cfg.kubernetes
    volumes = [{"name": name, "emptyDir": {}} for name in SCRATCH] + k.volumes
    mounts = [{"name": name, "mountPath": path} for name, path in SCRATCH.items()] + k.volume_mounts
    spec: dict[str, Any] = {
        "containers": [{"name": "base", "volumeMounts": mounts, "envFrom": k.env_from}],
        "volumes": volumes,
    }
    if k.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in k.image_pull_secrets]
    if k.tolerations:
        spec["tolerations"] = k.tolerations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": k.annotations}, "spec": spec}


def _env_vars(cfg: Execution) -> list[k8s.V1EnvVar]:
    """The step container's variables: plain values, then single keys of Secrets."""
    plain = [k8s.V1EnvVar(name=n, value=v) for n, v in {"HOME": "/tmp", **cfg.env}.items()]
    secret = [
        k8s.V1EnvVar(
            name=n,
            value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=ref.name, key=ref.key)),
        )
        for n, ref in cfg.kubernetes.env_secrets.items()
    ]
    return plain + secret


def step_pod_operator(
    step: str,
    inputs: dict[str, Any],
    *,
    cfg: Execution | None = None,
    config_path: str | None = None,
    **kwargs: Any,
) -> StepPodOperator:
    """The task that runs ``step`` as a pod, configured from the execution config.

    ``config_path`` (a catalogue model's config) becomes the pod's ``MLOPS_CONFIG``: the catalogue
    folder must be mounted at the same path in the pods (the chart's ``volumes``/``volume_mounts``).
    """
    cfg = cfg or load_execution()
    if config_path is not None and Path(config_path).resolve() != DEFAULT_CONFIG.resolve():
        cfg = cfg.model_copy(update={"env": {**cfg.env, "MLOPS_CONFIG": config_path}})
    k = cfg.kubernetes
    kwargs.setdefault("task_id", step)
    return StepPodOperator(
        step=step,
        step_inputs=inputs,
        name=f"mlops-{step.replace('_', '-')}",
        namespace=k.namespace,
        image=cfg.image,
        image_pull_policy=cfg.image_pull_policy,
        env_vars=_env_vars(cfg),
        container_resources=k8s.V1ResourceRequirements(**cfg.resources_for(step)),
        service_account_name=k.service_account,
        automount_service_account_token=False,
        security_context=POD_SECURITY_CONTEXT,
        container_security_context=CONTAINER_SECURITY_CONTEXT,
        xcom_sidecar_container_security_context=CONTAINER_SECURITY_CONTEXT,
        node_selector=k.node_selector or None,
        labels={"app.kubernetes.io/part-of": "mlops", "mlops/step": step, **k.labels},
        pod_template_dict=_pod_template(cfg),
        kubernetes_conn_id=k.kubernetes_conn_id,
        in_cluster=k.in_cluster,
        config_file=k.config_file,
        cluster_context=k.cluster_context,
        startup_timeout_seconds=k.startup_timeout_seconds,
        get_logs=True,
        log_events_on_failure=True,
        on_finish_action="delete_succeeded_pod",
        doc_md=f"Runs `mlops step {step}` in a pod of `{cfg.image}`.",
        **kwargs,
    )


def run_step_in_pod(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """One pod run of ``step`` from inside another task (a sensor's poke): its raw result."""
    # the sensor set the model's config for this poke (``step_tasks.model_environment``)
    op = step_pod_operator(step, inputs, task_id=f"{step}_poke", config_path=os.environ.get("MLOPS_CONFIG"))
    op.set_step_arguments(context)
    return KubernetesPodOperator.execute(op, context) or {}
