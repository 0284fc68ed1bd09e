"""Registry and serving credentials from Airflow connections, never from code or DAG files.

Two connections, both optional (ids configurable with ``MLOPS_MLFLOW_CONN_ID`` and
``MLOPS_SERVING_CONN_ID``):

- ``mlflow_default``: the tracking server and registry. ``host``/``port``/``schema`` (the URL
  scheme) give ``MLFLOW_TRACKING_URI``, or ``extra.tracking_uri`` gives it whole (e.g. a
  ``postgresql://`` store); ``login``/``password`` give ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``;
  ``extra.token`` gives ``MLFLOW_TRACKING_TOKEN``.
- ``mlops_serving``: the model server's URL (``MLOPS_SERVING_URL``) and bearer token
  (``password`` -> ``MLOPS_SERVING_TOKEN``).

Connections come from any Airflow secrets backend: ``AIRFLOW_CONN_*`` variables (the chart fills
them from Kubernetes Secrets), the metadata database, Vault. A step runs with these variables set
for its duration (in-process, subprocess and container modes); step pods get theirs from
Kubernetes Secrets through the execution config's ``envFrom``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from pipelines import util

log = logging.getLogger(__name__)


def _connection(conn_id: str) -> Any | None:
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception as exc:  # not defined: the environment's own settings apply
        if type(exc).__name__ not in {"AirflowNotFoundException", "AirflowRuntimeError"}:
            raise
        return None


def mlflow_environment(conn: Any) -> dict[str, str]:
    """MLflow's client variables from a connection."""
    extra = conn.extra_dejson or {}
    env: dict[str, str] = {}
    if extra.get("tracking_uri"):
        env["MLFLOW_TRACKING_URI"] = str(extra["tracking_uri"])
    elif conn.host:
        host = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
        env["MLFLOW_TRACKING_URI"] = f"{host}:{conn.port}" if conn.port else host
    if conn.login:
        env["MLFLOW_TRACKING_USERNAME"] = conn.login
    if conn.password:
        env["MLFLOW_TRACKING_PASSWORD"] = conn.password
    if extra.get("token"):
        env["MLFLOW_TRACKING_TOKEN"] = str(extra["token"])
    return env


def serving_environment(conn: Any) -> dict[str, str]:
    """The model server's URL and token from a connection."""
    env: dict[str, str] = {}
    if conn.host:
        host = conn.host if "://" in conn.host else f"{conn.schema or 'http'}://{conn.host}"
        env["MLOPS_SERVING_URL"] = f"{host}:{conn.port}" if conn.port else host
    if conn.password:
        env["MLOPS_SERVING_TOKEN"] = conn.password
    return env


def step_environment() -> dict[str, str]:
    """Variables the connections define (empty when neither connection exists)."""
    env: dict[str, str] = {}
    mlflow_conn = _connection(os.environ.get("MLOPS_MLFLOW_CONN_ID", "mlflow_default"))
    if mlflow_conn is not None:
        env |= mlflow_environment(mlflow_conn)
    serving_conn = _connection(os.environ.get("MLOPS_SERVING_CONN_ID", "mlops_serving"))
    if serving_conn is not None:
        env |= serving_environment(serving_conn)
    return env


@contextlib.contextmanager
def connection_environment() -> Iterator[dict[str, str]]:
    """Set the connections' variables for the duration of one step, then restore the old ones."""
    env = step_environment()
    if env:
        log.info("credentials from Airflow connections: %s", sorted(env))  # names only, never values
    with util.environment(env):
        yield env
