"""Registry reads from Airflow's API server (the alert webhook, the Models page), bounded in time.

MLflow's client retries for minutes, so each read runs on this module's two threads and the
caller waits only its own budget: a hung registry holds two threads, not one per request.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mlops-registry")


def submit(read: Callable[..., Any], *args: Any) -> Future:
    """Start ``read(*args)`` on the shared threads.

    MLflow's client is imported first, here, before the caller's clock starts: the first read of
    a process pays that import (seconds, more than a whole budget on a loaded machine), not the
    registry.
    """
    import mlflow.exceptions  # noqa: F401
    from mlflow import MlflowClient  # noqa: F401

    return _POOL.submit(read, *args)
