"""What a step task knows of its Airflow run: the run context it passes on, how it ends.

Shared by every execution mode (``step_tasks`` in process and as a subprocess, ``containers`` and
``pods``), so that none of them imports another's private helpers.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from pipelines.config import RUN_PARAMETERS
from pipelines.pipeline import is_skipped


def trigger_of(context: dict[str, Any]) -> dict[str, Any]:
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
    trigger = trigger_of(context)
    start, end, origin = None, conf.get("interval_end"), "the interval_end in the run's conf (the form)"
    if not end and context.get("data_interval_end"):
        start, end = context.get("data_interval_start"), context["data_interval_end"]
        origin = f"the run's data interval (its logical date is {logical_day(context)})"
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


def logical_day(context: dict[str, Any]) -> str:
    """The run's logical date for messages, or ``(none)``."""
    logical = context.get("logical_date") or getattr(context["dag_run"], "logical_date", None)
    return f"{logical:%Y-%m-%d %H:%M %Z}" if logical else "(none)"


def skip_if_skipped(result: dict[str, Any]) -> dict[str, Any]:
    """The result, or Airflow's skip when the step decided to skip."""
    if is_skipped(result):
        raise AirflowSkipException(result.get("reason", "the step decided to skip"))
    return result


def finish(result: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Skip, or succeed; a result's ``event_extra`` goes onto the Asset events the task emits."""
    result = skip_if_skipped(result)
    extra = result.get("event_extra")
    task = context.get("task")
    if extra and task is not None and context.get("outlet_events") is not None:
        for outlet in task.outlets:
            context["outlet_events"][outlet].extra = extra
    return result


def last_error(stderr: str) -> str:
    """The ``error:`` lines a failed ``mlops step`` printed last (its whole stderr tail otherwise)."""
    lines = stderr.strip().splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=len(lines) - 1)
    return "\n".join(lines[start:]).removeprefix("error: ")
