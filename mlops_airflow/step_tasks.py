"""The step-task factory: a step name and the execution mode give an Airflow task.

Every mode runs the same entrypoint, ``mlops step <name>``, with the same two
JSON documents: the run context (ids, data interval, run parameters) and the
upstream results. Modes:

- ``local`` (default): in the worker's process, calling the CLI's function;
- ``subprocess``: the ``mlops step`` command in a child process;
- ``docker``: the command in a container of the step image (``containers.py``);
- ``kubernetes``: the command in a pod, by KubernetesPodOperator (``pods.py``).

Containers and pods write the result to ``/airflow/xcom/return.json``. The mode and the
image come from the execution config (``execution.py``). Nothing here imports an ML library
at DAG-parse time.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import PokeReturnValue, task
from airflow.sdk.exceptions import AirflowFailException

from mlops_airflow.containers import run_step_in_container
from mlops_airflow.execution import load_execution
from mlops_airflow.task_context import finish, last_error, run_context, skip_if_skipped
from pipelines import util
from pipelines.catalogue import Model
from pipelines.cli import EXIT_NOT_RETRYABLE, EXIT_SKIPPED
from pipelines.pipeline import POLLED_STEPS, StepSpec

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True}


def run_step_in_process(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Mode ``local``: run the step in this worker process."""
    from pipelines.context import StepContext
    from pipelines.errors import PipelineError
    from pipelines.runner import execute_step

    try:
        ctx = StepContext.create(**run_context(context))
        return finish(execute_step(step, ctx, inputs), context)
    except PipelineError as exc:
        if not exc.retryable:  # bad data or config: a retry cannot help
            raise AirflowFailException(str(exc)) from exc
        raise


def run_step_in_subprocess(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Mode ``subprocess``: run ``mlops step`` as a child process and read its result file."""
    with tempfile.TemporaryDirectory(prefix=f"mlops-{step}-") as tmp:
        result_file, inputs_file = os.path.join(tmp, "return.json"), os.path.join(tmp, "inputs.json")
        with open(inputs_file, "w") as fh:  # a file, not argv: upstream results may be large
            json.dump(inputs, fh)
        cmd = [
            sys.executable, "-m", "pipelines.cli", "step", step,
            "--context", json.dumps(run_context(context)),
            "--inputs", f"@{inputs_file}",
            "--result-file", result_file,
        ]  # fmt: skip
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        sys.stderr.write(proc.stderr)
        if proc.returncode == EXIT_SKIPPED:
            return skip_if_skipped(json.loads(open(result_file).read()))
        if proc.returncode == EXIT_NOT_RETRYABLE:
            raise AirflowFailException(last_error(proc.stderr) or f"mlops step {step} failed")
        if proc.returncode != 0:
            raise RuntimeError(last_error(proc.stderr) or f"mlops step {step} exited {proc.returncode}")
        with open(result_file) as fh:
            return finish(json.load(fh), context)


def with_connections(callable_: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a step with the registry and serving credentials of the Airflow connections.

    ``config_path`` (a keyword of the task) is the model's pipeline config: it becomes the step's
    ``MLOPS_CONFIG`` in every mode (this process, the child, the container), so that one worker
    runs the steps of every model of the catalogue.
    """

    @functools.wraps(callable_)
    def run(*args: Any, config_path: str | None = None, **kwargs: Any) -> dict[str, Any]:
        from mlops_airflow.credentials import connection_environment

        with connection_environment(), util.environment({"MLOPS_CONFIG": config_path} if config_path else {}):
            return callable_(*args, **kwargs)

    return run


def _python_task(callable_: Callable[..., Any]) -> Callable[..., PythonOperator]:
    def build(
        step: str, inputs: dict[str, Any], config_path: str | None = None, **kwargs: Any
    ) -> PythonOperator:
        return PythonOperator(
            task_id=step,
            python_callable=with_connections(callable_),
            op_kwargs={"step": step, "inputs": inputs, "config_path": config_path},
            doc_md=f"Runs `mlops step {step}`.",
            **kwargs,
        )

    return build


def _pod_task(step: str, inputs: dict[str, Any], **kwargs: Any) -> Any:
    from mlops_airflow.pods import step_pod_operator  # imports the Kubernetes client: only in this mode

    return step_pod_operator(step, inputs, **kwargs)


def run_step_in_pod(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Mode ``kubernetes`` inside a sensor: one pod per poke."""
    from mlops_airflow.pods import run_step_in_pod as run

    return run(step, inputs, **context)


MODES: dict[str, Callable[..., Any]] = {
    "local": _python_task(run_step_in_process),
    "subprocess": _python_task(run_step_in_subprocess),
    "docker": _python_task(run_step_in_container),
    "kubernetes": _pod_task,
}
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "local": run_step_in_process,
    "subprocess": run_step_in_subprocess,
    "docker": run_step_in_container,
    "kubernetes": run_step_in_pod,
}


def poke_step(
    step: str, inputs: dict[str, Any], mode: str, config_path: str | None = None, **context: Any
) -> PokeReturnValue:
    """One poke of a polled step: done when its result no longer says ``status: waiting``.

    In the container modes each poke is one short container or pod, so a long wait holds no
    resources between pokes.
    """
    result = with_connections(RUNNERS[mode])(step, inputs, config_path=config_path, **context)
    return PokeReturnValue(is_done=result.get("status") != "waiting", xcom_value=result)


def sensor_task(
    step: str,
    inputs: dict[str, Any],
    *,
    mode: str,
    config_path: str | None = None,
    poke_seconds: float = 60,
    timeout_seconds: float | None = None,
    **kwargs: Any,
):
    """A sensor that re-runs ``step`` until it decides; in reschedule mode it frees its slot in between.

    ``execution_timeout`` bounds one try: in reschedule mode that is one poke; in poke mode the try
    holds every poke, so the sensor's whole ``timeout`` is added to it."""
    reschedule = poke_seconds >= 60
    if not reschedule and timeout_seconds and kwargs.get("execution_timeout") is not None:
        kwargs["execution_timeout"] += timedelta(seconds=timeout_seconds)
    sensor = task.sensor(
        task_id=step,
        poke_interval=poke_seconds,
        timeout=timeout_seconds,
        mode="reschedule" if reschedule else "poke",
        doc_md=f"Polls `mlops step {step}` every {poke_seconds:g} s until it decides.",
        **kwargs,
    )(poke_step)
    return sensor(step=step, inputs=inputs, mode=mode, config_path=config_path)


def step_task(step: str, inputs: dict[str, Any] | None = None, *, mode: str | None = None, **kwargs: Any):
    """Build the Airflow task that runs ``step``; ``inputs`` maps upstream step names to their XComArgs."""
    mode = mode or load_execution().mode
    if mode not in MODES:
        raise ValueError(f"unknown execution mode {mode!r}; choose one of {sorted(MODES)}")
    return MODES[mode](step, inputs or {}, **kwargs)


def _output(task_or_arg: Any) -> Any:
    return getattr(task_or_arg, "output", task_or_arg)


def pipeline_tasks(
    spec: Iterable[StepSpec],
    *,
    outlets: dict[str, list[Any]] | None = None,
    mode: str | None = None,
    sensors: dict[str, dict[str, Any]] | None = None,
    task_kwargs: dict[str, dict[str, Any]] | None = None,
    model: Model | None = None,
) -> dict[str, Any]:
    """One task per step of ``spec``, each fed the results of its inputs (which also orders them).

    Polled steps (``POLLED_STEPS``) become sensors; ``sensors`` gives their poke interval and timeout.
    ``task_kwargs`` adds operator arguments per step (e.g. callbacks). ``model`` is the catalogue
    entry the DAG is for: its config file is every step's ``MLOPS_CONFIG``.
    """
    execution = load_execution()
    mode = mode or execution.mode
    tasks: dict[str, Any] = {}
    for step in spec:
        inputs = {name: _output(tasks[name]) for name in step.inputs}
        step_outlets = (outlets or {}).get(step.name, [])
        # every task has a deadline: one try (a sensor's one poke) that hangs fails and is retried
        deadline = {"execution_timeout": execution.timeout_for(step.name)}
        extra = {**deadline, **(task_kwargs or {}).get(step.name, {})}
        # A catalogue model's steps run with its config whatever the worker's MLOPS_CONFIG says; a
        # single-model deployment's steps read MLOPS_CONFIG when they run, as they always have.
        if model is not None and model.in_catalogue:
            extra["config_path"] = str(model.path.resolve())
        if step.name in POLLED_STEPS:
            poll = {**(sensors or {}).get(step.name, {}), **extra}
            tasks[step.name] = sensor_task(step.name, inputs, mode=mode, outlets=step_outlets, **poll)
        else:
            tasks[step.name] = step_task(step.name, inputs, mode=mode, outlets=step_outlets, **extra)
    return tasks
