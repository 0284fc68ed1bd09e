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
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from mlops_airflow.containers import run_step_in_container
from mlops_airflow.execution import load_execution
from pipelines.cli import EXIT_NOT_RETRYABLE, EXIT_SKIPPED
from pipelines.config import RUN_PARAMETERS
from pipelines.pipeline import POLLED_STEPS, StepSpec, is_skipped

DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True}


def _trigger(context: dict[str, Any]) -> dict[str, Any]:
    """Who or what started the run, as plain JSON: the audit trail records it."""
    dag_run = context["dag_run"]
    events = []
    for group in (context.get("triggering_asset_events") or {}).values():
        for event in group:
            events.append(
                {
                    "uri": getattr(getattr(event, "asset", None), "uri", None),
                    "extra": dict(event.extra or {}),
                    "source_dag_id": getattr(event, "source_dag_id", None),
                    "source_run_id": getattr(event, "source_run_id", None),
                }
            )
    return {"user": getattr(dag_run, "triggering_user_name", None), "asset_events": events}


def run_context(context: dict[str, Any]) -> dict[str, Any]:
    """The step's run context from the Airflow task context.

    The window ends at, in order: the ``interval_end`` the run was triggered with
    (params form, conf), the run's data interval, the ``interval_end`` of the
    asset event that triggered it, or the time the run was due. Only parameters
    the run's conf sets override the config: a form default never masks it.
    """
    dag_run = context["dag_run"]
    conf = dag_run.conf or {}
    params = context.get("params") or {}
    trigger = _trigger(context)
    start, end, origin = None, conf.get("interval_end"), "the interval_end in the run's conf (the form)"
    if not end and context.get("data_interval_end"):
        start, end = context.get("data_interval_start"), context["data_interval_end"]
        origin = f"the run's data interval (its logical date is {_day(context)})"
        if start == end:  # asset-triggered or unscheduled runs have a point, not an interval
            start = None
    if not end:  # ``interval_end`` in the extra of an asset event that triggered this run, if any
        events = trigger["asset_events"]
        end = next((e["extra"]["interval_end"] for e in events if e["extra"].get("interval_end")), None)
        origin = "the interval_end of the asset event that triggered the run"
    if not end:
        end, origin = dag_run.run_after, "the time the run was triggered (no interval_end, no data interval)"
    return {
        "dag_id": dag_run.dag_id,
        "run_id": dag_run.run_id,
        "interval_start": str(start) if start else None,
        "interval_end": str(end),
        "interval_origin": origin,
        "try_number": context["ti"].try_number,
        "run_type": str(getattr(dag_run.run_type, "value", dag_run.run_type)),
        "overrides": {k: params.get(k, conf[k]) for k in RUN_PARAMETERS if k in conf},
        "trigger": trigger,
    }


def _day(context: dict[str, Any]) -> str:
    logical = context.get("logical_date") or getattr(context["dag_run"], "logical_date", None)
    return f"{logical:%Y-%m-%d %H:%M %Z}" if logical else "(none)"


def _skip_if_skipped(result: dict[str, Any]) -> dict[str, Any]:
    if is_skipped(result):
        raise AirflowSkipException(result.get("reason", "the step decided to skip"))
    return result


def _finish(result: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Skip, or succeed; a result's ``event_extra`` goes onto the Asset events the task emits."""
    result = _skip_if_skipped(result)
    extra = result.get("event_extra")
    task = context.get("task")
    if extra and task is not None and context.get("outlet_events") is not None:
        for outlet in task.outlets:
            context["outlet_events"][outlet].extra = extra
    return result


def run_step_in_process(step: str, inputs: dict[str, Any], **context: Any) -> dict[str, Any]:
    """Mode ``local``: run the step in this worker process."""
    from pipelines.context import StepContext
    from pipelines.errors import PipelineError
    from pipelines.runner import execute_step

    try:
        ctx = StepContext.create(**run_context(context))
        return _finish(execute_step(step, ctx, inputs), context)
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
            return _skip_if_skipped(json.loads(open(result_file).read()))
        if proc.returncode == EXIT_NOT_RETRYABLE:
            raise AirflowFailException(_last_error(proc.stderr) or f"mlops step {step} failed")
        if proc.returncode != 0:
            raise RuntimeError(_last_error(proc.stderr) or f"mlops step {step} exited {proc.returncode}")
        with open(result_file) as fh:
            return _finish(json.load(fh), context)


def _last_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=len(lines) - 1)
    return "\n".join(lines[start:]).removeprefix("error: ")


def with_connections(callable_: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Run a step with the registry and serving credentials of the Airflow connections."""

    @functools.wraps(callable_)
    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        from mlops_airflow.credentials import connection_environment

        with connection_environment():
            return callable_(*args, **kwargs)

    return run


def _python_task(callable_: Callable[..., Any]) -> Callable[..., PythonOperator]:
    def build(step: str, inputs: dict[str, Any], **kwargs: Any) -> PythonOperator:
        return PythonOperator(
            task_id=step,
            python_callable=with_connections(callable_),
            op_kwargs={"step": step, "inputs": inputs},
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


def poke_step(step: str, inputs: dict[str, Any], mode: str, **context: Any) -> PokeReturnValue:
    """One poke of a polled step: done when its result no longer says ``status: waiting``.

    In the container modes each poke is one short container or pod, so a long wait holds no
    resources between pokes.
    """
    result = with_connections(RUNNERS[mode])(step, inputs, **context)
    return PokeReturnValue(is_done=result.get("status") != "waiting", xcom_value=result)


def sensor_task(
    step: str,
    inputs: dict[str, Any],
    *,
    mode: str,
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
    return sensor(step=step, inputs=inputs, mode=mode)


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
) -> dict[str, Any]:
    """One task per step of ``spec``, each fed the results of its inputs (which also orders them).

    Polled steps (``POLLED_STEPS``) become sensors; ``sensors`` gives their poke interval and timeout.
    ``task_kwargs`` adds operator arguments per step (e.g. callbacks).
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
        if step.name in POLLED_STEPS:
            poll = {**(sensors or {}).get(step.name, {}), **extra}
            tasks[step.name] = sensor_task(step.name, inputs, mode=mode, outlets=step_outlets, **poll)
        else:
            tasks[step.name] = step_task(step.name, inputs, mode=mode, outlets=step_outlets, **extra)
    return tasks
