"""Where and how steps run: the execution config, read when a DAG file is parsed.

The same DAG file runs in every mode; the mode, the step image, and the container or pod
settings come from a YAML file named by ``MLOPS_EXECUTION_CONFIG`` (the Helm chart mounts one),
with two environment overrides for the common cases: ``MLOPS_EXECUTION_MODE`` and
``MLOPS_STEP_IMAGE``. Example (every key optional)::

    mode: kubernetes                 # local | subprocess | docker | kubernetes
    image: registry.example/mlops-step:0.1.0
    env: {MLFLOW_TRACKING_URI: "http://mlflow:5000"}
    resources:                       # requests/limits per step; `default` for the others
      train: {requests: {cpu: "1", memory: 2Gi}, limits: {cpu: "2", memory: 6Gi}}
    kubernetes:
      namespace: mlops
      service_account: mlops-steps
      env_from: [{secretRef: {name: mlops-stores}}]
    docker:
      network_mode: host
"""

from __future__ import annotations

import fnmatch
import os
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from pipelines.util import Strict

CONFIG_ENV = "MLOPS_EXECUTION_CONFIG"
MODE_ENV = "MLOPS_EXECUTION_MODE"
IMAGE_ENV = "MLOPS_STEP_IMAGE"
MODES = ("local", "subprocess", "docker", "kubernetes")
STEP_UID = 10001  # the step image's user (containers/Dockerfile)


def _project_version() -> str:
    try:
        return version("mlops-airflow")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "dev"


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu_limit, "memory": memory_limit}}


# Training fits and searches on the whole window: it gets the most; scoring and evaluation next.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "default": _resources("250m", "512Mi", "1", "2Gi"),
    "train": _resources("1", "2Gi", "2", "6Gi"),
    "evaluate": _resources("500m", "1Gi", "1", "3Gi"),
    "score": _resources("500m", "1Gi", "1", "3Gi"),
    "detect_drift": _resources("500m", "1Gi", "1", "3Gi"),
    "validate_serving": _resources("500m", "1Gi", "1", "2Gi"),
}
# How long one try of a step may run before Airflow kills it and retries (minutes); for a sensor,
# one poke. A hung database, registry or cluster call then fails the task instead of holding a slot
# (and the run) for ever.
DEFAULT_TIMEOUT_MINUTES: dict[str, float] = {"default": 60, "train": 360, "backfill": 360}


class Resources(Strict):
    """Kubernetes requests and limits of one step's container."""

    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], str] = Field(default_factory=dict)


class SecretKey(Strict):
    """One key of a Kubernetes Secret (an environment variable's ``valueFrom.secretKeyRef``)."""

    name: str
    key: str


class KubernetesOptions(Strict):
    """Pod settings of the ``kubernetes`` mode (lists of dicts are Kubernetes objects, camelCase)."""

    namespace: str = "default"
    service_account: str | None = None
    env_from: list[dict[str, Any]] = Field(default_factory=list)
    # Variables read from one key of a Secret each (a step gets only the keys it needs, e.g. the
    # pipeline's MLflow password, never a whole Secret with the admin's).
    env_secrets: dict[str, SecretKey] = Field(default_factory=dict)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = Field(default_factory=list)
    image_pull_secrets: list[str] = Field(default_factory=list)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    kubernetes_conn_id: str = "kubernetes_default"
    in_cluster: bool | None = None
    config_file: str | None = None
    cluster_context: str | None = None
    startup_timeout_seconds: int = Field(600, gt=0)


class DockerOptions(Strict):
    """Container settings of the ``docker`` mode (one host, Docker API at ``DOCKER_HOST``)."""

    host: str | None = None  # default: DOCKER_HOST, then the local socket
    network_mode: str = "host"  # so 127.0.0.1 URIs of the MLflow server and the stores work
    volumes: list[str] = Field(default_factory=list)  # extra "host:container[:ro]" mounts
    # None: the image's user (UID 10001), or this process's UID:GID when a local folder is
    # bind-mounted, so that files in the shared store keep one owner
    user: str | None = None
    pass_env: list[str] = Field(default_factory=lambda: ["MLOPS_*", "MLFLOW_*", "AWS_*"])


class Execution(Strict):
    """The execution config: mode, step image and the container/pod settings."""

    mode: Literal["local", "subprocess", "docker", "kubernetes"] = "local"
    image: str = Field(default_factory=lambda: f"mlops-step:{_project_version()}")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    env: dict[str, str] = Field(default_factory=dict)
    resources: dict[str, Resources] = Field(default_factory=dict)
    # Per-step execution_timeout in minutes (``default`` for steps not listed).
    timeout_minutes: dict[str, float] = Field(default_factory=dict)
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions)
    docker: DockerOptions = Field(default_factory=DockerOptions)

    def resources_for(self, step: str) -> dict[str, dict[str, str]]:
        """Requests and limits of ``step``: the config's entry, else the built-in one, else ``default``."""
        if step in self.resources:
            return self.resources[step].model_dump()
        if step in DEFAULT_RESOURCES:
            return DEFAULT_RESOURCES[step]
        if "default" in self.resources:
            return self.resources["default"].model_dump()
        return DEFAULT_RESOURCES["default"]

    def timeout_for(self, step: str) -> timedelta:
        """``execution_timeout`` of ``step``: the config's entry, else the built-in one, else ``default``."""
        for table in (self.timeout_minutes, DEFAULT_TIMEOUT_MINUTES):
            if step in table:
                return timedelta(minutes=table[step])
        minutes = self.timeout_minutes.get("default", DEFAULT_TIMEOUT_MINUTES["default"])
        return timedelta(minutes=minutes)

    @field_validator("timeout_minutes")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        bad = [step for step, minutes in value.items() if not minutes > 0]
        if bad:
            raise ValueError(f"timeout_minutes must be > 0 for {', '.join(bad)}")
        return value

    def passed_env(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """The worker's variables a container inherits (``docker.pass_env`` patterns), then ``env``."""
        environ = dict(os.environ if environ is None else environ)
        skip = {CONFIG_ENV, MODE_ENV, IMAGE_ENV}
        inherited = {
            k: v
            for k, v in environ.items()
            if k not in skip and any(fnmatch.fnmatchcase(k, p) for p in self.docker.pass_env)
        }
        return {**inherited, **self.env}


def load_execution(environ: dict[str, str] | None = None) -> Execution:
    """The execution config from ``MLOPS_EXECUTION_CONFIG`` and the two overrides.

    A malformed file raises ``ValueError`` naming the file and each bad key, so the DAG shows
    an import error that says what to fix.
    """
    environ = dict(os.environ if environ is None else environ)
    data: dict[str, Any] = {}
    path = environ.get(CONFIG_ENV)
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{CONFIG_ENV}={path}: cannot read the execution config: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{CONFIG_ENV}={path}: expected a mapping, got {type(data).__name__}")
    if environ.get(MODE_ENV):
        data["mode"] = environ[MODE_ENV]
    if environ.get(IMAGE_ENV):
        data["image"] = environ[IMAGE_ENV]
    try:
        return Execution.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        source = f"{CONFIG_ENV}={path}" if path else "execution config"
        raise ValueError(f"{source}: {problems}") from None


def step_arguments(step: str, context: dict[str, Any], inputs: dict[str, Any], result_file: str) -> list[str]:
    """The arguments of ``mlops step`` (the step image's entrypoint) for one run of ``step``."""
    import json

    return [
        step,
        "--context", json.dumps(context, default=str),
        "--inputs", json.dumps(inputs, default=str),
        "--result-file", result_file,
    ]  # fmt: skip
