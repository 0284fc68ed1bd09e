"""Who or what started a run: the trigger classifier behind the audit trail's ``trigger`` field.

:func:`trigger_info` maps an Airflow run type (and, for an asset-triggered run, the asset events
that triggered it) to ``{"type", "by", "asset", "source"}``: a schedule, a person, an upstream
DAG, a monitoring request or an Alertmanager alert. The result is scrubbed of anything that looks
like a credential. This module imports no ML library and not :mod:`pipelines.audit` (which
re-exports :func:`trigger_info`), so Airflow code may import it at DAG-parse time.
"""

from __future__ import annotations

from typing import Any

from pipelines.redaction import scrub
from pipelines.util import field

# Airflow 3 run types (DagRunType values) -> trigger type
TRIGGER_TYPES = {
    "scheduled": "schedule",
    "manual": "manual",
    "asset_triggered": "asset",
    "dataset_triggered": "asset",  # Airflow 2's name
    "backfill": "backfill",
    "operator_triggered": "manual",  # TriggerDagRunOperator: another DAG's task, on someone's behalf
    "asset_materialization": "manual",  # a user asked for an asset to be materialized
}


def _primary(asset_events: list[Any]) -> Any:
    """The event that best explains the run: an alert, then a monitoring request, then the first."""
    for source in ("alertmanager", "monitoring"):
        for event in asset_events:
            if (field(event, "extra") or {}).get("source") == source:
                return event
    return asset_events[0]


def _source(event: Any) -> dict[str, Any] | None:
    extra = field(event, "extra") or {}
    dag_id, run_id = field(event, "source_dag_id"), field(event, "source_run_id")
    if extra.get("source") == "alertmanager":
        return {
            "system": "alertmanager",
            "alertname": extra.get("alertname"),
            "fingerprint": extra.get("fingerprint"),
            "starts_at": extra.get("starts_at"),
            "features": extra.get("features") or [],
        }
    if extra.get("source") == "monitoring":
        return {
            "system": "monitoring",
            "report_uri": extra.get("report_uri"),
            "drifted_features": extra.get("drifted_features") or [],
            "champion_version": extra.get("champion_version"),
            "dag_id": dag_id,
            "run_id": run_id or extra.get("monitoring_run_id"),
        }
    if dag_id:
        return {"system": "dag", "dag_id": dag_id, "run_id": run_id}
    return {"system": str(extra.get("source") or "api")}


def trigger_info(
    run_type: Any, *, user: str | None = None, asset_events: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Who or what started a run: ``{"type", "by", "asset", "source"}`` (plus ``events`` for assets).

    ``type`` is schedule, manual, asset, alert (an asset event from the Alertmanager webhook) or
    backfill; an unknown run type is kept as given. ``by`` is the Airflow user, ``"scheduler"``,
    or the asset's URI. ``asset_events`` are plain dicts ``{"uri", "extra", "source_dag_id",
    "source_run_id"}``; when several triggered the run, an alert explains it first, then a
    monitoring request, then the first event.
    """
    raw = str(getattr(run_type, "value", run_type)).lower().removeprefix("dagruntype.")
    kind = TRIGGER_TYPES.get(raw, raw)
    events = list(asset_events or [])
    info: dict[str, Any] = {"type": kind, "by": user, "asset": None, "source": None}
    if kind == "schedule":
        info["by"] = "scheduler"
    elif kind == "asset":
        info["events"] = len(events)
        if events:
            primary = _primary(events)
            source = _source(primary)
            info.update(asset=field(primary, "uri"), by=field(primary, "uri") or user, source=source)
            if source and source["system"] == "alertmanager":
                info["type"] = "alert"
    return scrub(info)
