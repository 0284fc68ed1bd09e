"""Mode ``docker``: each step in its own container of the step image, through the Docker API.

Why not Airflow's DockerOperator: it returns a step's result only as the last log line or as a
*pickled* file, and it has no notion of "skip" or "do not retry". Here the container runs
``mlops step <name>`` exactly as a pod does, the result is read back from
``/airflow/xcom/return.json`` inside the stopped container (JSON, never pickle), and the exit
code decides: 0 done, 99 skipped, 3 bad input (fail, no retry), anything else retried.

On one host the steps share the stores: local folders (artifact root, a SQLite tracking
database, a config file outside the package) are bind-mounted at the same path, and the
container joins the host network so ``127.0.0.1`` URIs keep working.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from collections import deque
from pathlib import Path
from typing import Any

from mlops_airflow.execution import STEP_UID, Execution, load_execution, step_arguments
from mlops_airflow.task_context import finish, last_error, run_context

XCOM_PATH = "/airflow/xcom/return.json"


def _local_path(uri: str) -> str | None:
    if not uri:
        return None
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    return None if "://" in uri else uri


def shared_mounts(settings: Any) -> list[str]:
    """Local folders a step container must see at the same path, as ``host:host:mode`` volume specs.

    The stores (artifact root, a SQLite tracking database, a local prediction log) are mounted
    read-write; a config outside the package, read-only.
    """
    import pipelines

    stores = []
    if root := _local_path(settings.artifact_root):
        stores.append(Path(root))
    if settings.tracking_uri.startswith("sqlite:///"):
        stores.append(Path(settings.tracking_uri.removeprefix("sqlite:///")).parent)
    log = settings.prediction_log_url
    if (path := _local_path(log)) and not log.startswith("postgresql"):
        stores.append(Path(path))
    kept: list[Path] = []
    for folder in sorted({f.resolve() for f in stores}, key=lambda p: len(p.parts)):
        if not any(folder.is_relative_to(k) for k in kept):
            kept.append(folder)
    for folder in kept:
        folder.mkdir(parents=True, exist_ok=True)
    mounts = [f"{f}:{f}:rw" for f in kept]
    config = Path(settings.config_path).resolve().parent
    packaged = config.is_relative_to(Path(pipelines.__file__).parent.resolve())  # in the image already
    if not packaged and not any(config.is_relative_to(k) for k in kept):
        mounts.append(f"{config}:{config}:ro")
    return mounts


def container_environment(cfg: Execution, settings: Any) -> dict[str, str]:
    """The step container's environment: inherited ``MLOPS_*``/``MLFLOW_*``/``AWS_*``, the resolved stores."""
    from pipelines.settings import DEFAULT_CONFIG

    env = cfg.passed_env()
    env.update(MLFLOW_TRACKING_URI=settings.tracking_uri, MLOPS_ARTIFACT_ROOT=settings.artifact_root)
    if Path(settings.config_path).resolve() == DEFAULT_CONFIG.resolve():
        env.pop("MLOPS_CONFIG", None)  # the image's own copy of the packaged default
    else:
        env["MLOPS_CONFIG"] = str(Path(settings.config_path).resolve())  # mounted by shared_mounts
    if settings.prediction_log_url:
        env["MLOPS_PREDICTION_LOG"] = settings.prediction_log_url
    env.pop("MLOPS_HOME", None)  # the container's home is its own (the image sets it)
    return env


def read_result(container: Any) -> dict[str, Any]:
    """The JSON result a finished step container left at ``/airflow/xcom/return.json``."""
    stream, _ = container.get_archive(XCOM_PATH)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmembers()[0]
        return json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]


def _docker_client(cfg: Execution) -> Any:
    import docker

    if cfg.docker.host:
        return docker.DockerClient(base_url=cfg.docker.host, timeout=120)
    return docker.from_env(timeout=120)


def run_step_in_container(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Run ``mlops step <step>`` in a fresh container of the step image; its result, or skip/fail."""
    from airflow.sdk.exceptions import AirflowFailException
    from docker.errors import ImageNotFound

    from pipelines.cli import EXIT_NOT_RETRYABLE, EXIT_SKIPPED
    from pipelines.settings import Settings

    cfg, settings = load_execution(), Settings.from_env()
    client = _docker_client(cfg)
    mounts = [*shared_mounts(settings), *cfg.docker.volumes]
    user = cfg.docker.user or (f"{os.getuid()}:{os.getgid()}" if mounts else f"{STEP_UID}:{STEP_UID}")
    ctx = run_context(context)
    try:
        container = client.containers.create(
            cfg.image,
            command=step_arguments(step, ctx, inputs, XCOM_PATH),
            environment=container_environment(cfg, settings),
            volumes=mounts,
            network_mode=cfg.docker.network_mode,
            user=user,
            labels={"mlops.step": step, "mlops.dag_id": ctx["dag_id"], "mlops.run_id": ctx["run_id"]},
        )
    except ImageNotFound as exc:
        raise AirflowFailException(
            f"step image {cfg.image!r} is not on the Docker host ({client.api.base_url}): "
            "build it with `make images`, or set MLOPS_STEP_IMAGE"
        ) from exc
    tail: deque[str] = deque(maxlen=40)
    try:
        container.start()
        print(f"step {step}: container {container.short_id} of {cfg.image}", file=sys.stderr)
        pending = b""
        for chunk in container.logs(stream=True, follow=True):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                tail.append(text)
                print(text, file=sys.stderr)
        if pending:
            tail.append(pending.decode(errors="replace"))
        code = container.wait()["StatusCode"]
        message = last_error("\n".join(tail))
        if code == EXIT_NOT_RETRYABLE:
            raise AirflowFailException(message or f"mlops step {step} stopped on bad input or config")
        if code not in (0, EXIT_SKIPPED):
            raise RuntimeError(f"mlops step {step} exited {code} in its container: {message}")
        return finish(read_result(container), context)
    finally:
        container.remove(force=True)
