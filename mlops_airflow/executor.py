"""LocalExecutor with a warm interpreter: the step libraries are imported once, not once per task.

Airflow 3's LocalExecutor forks its workers from the scheduler when it starts, and each worker
forks one process per task (``supervise_task``, a bare ``os.fork`` on Linux). A task process
therefore inherits every module the scheduler had imported before the fork. Left alone, each
task imports MLflow, scikit-learn and pandas again (about 3 s of CPU), the validate step Great
Expectations too (3.5 s more), and every poke of the rollout sensor pays the same. This executor
imports the step modules in the scheduler before the workers fork, so a task starts with them
loaded. Nothing else changes: same workers, same queue, same supervision.

Use it with ``AIRFLOW__CORE__EXECUTOR=mlops_airflow.executor.WarmLocalExecutor`` (the local
stack does). ``MLOPS_WARM_IMPORTS=off`` turns the warm-up off. A module that fails to import is
logged and skipped: the task that needs it then fails with its own, clear error.
"""

from __future__ import annotations

import importlib
import logging
import os
import time

from airflow.executors.local_executor import LocalExecutor

from pipelines.util import env_bool

log = logging.getLogger(__name__)

# What the step processes import: the runner and every step (MLflow, scikit-learn, pandas,
# pydantic), the task factory the DAG files import, and Great Expectations (validate imports it
# on use). Feast is left out: only a config with a feature store needs it, and it is slow to load.
WARM_MODULES = (
    "pipelines.runner",
    "pipelines.cli",
    "mlops_airflow.step_tasks",
    "mlflow",
    "sklearn.ensemble",
    "great_expectations",
)


def warm_up(modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
    """Import the step modules into this process; return those that failed (logged, not raised)."""
    from pipelines.pipeline import STEP_NAMES

    started, failed = time.perf_counter(), []
    for name in (*modules, *(f"pipelines.steps.{step}" for step in STEP_NAMES)):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a task needing it fails on its own import, with its own error
            log.warning("warm-up: could not import %s: %s", name, exc)
            failed.append(name)
    log.info("warm-up: step modules imported in %.1f s", time.perf_counter() - started)
    return failed


class WarmLocalExecutor(LocalExecutor):
    """LocalExecutor whose workers fork from a scheduler that has the step modules imported."""

    def start(self) -> None:
        if env_bool(os.environ, "MLOPS_WARM_IMPORTS", True):
            warm_up()
        super().start()
