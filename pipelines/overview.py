"""One page for every model of the catalogue: what serves, what is rolling out, how it is doing.

The Airflow plugin (``mlops_airflow.overview``) gathers each model's facts from the registry and
from its DAG runs' results; this module only shapes and renders them (no Airflow, no MLflow):
champion and challenger, the rollout in progress with its sample so far, the monitoring verdicts
with drift share and live/estimated ROC AUC over time as a chart, the last retrain and why, and
links to the runs, the registry and the reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines.reports import _render

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 520, 160, 28


@dataclass
class ModelOverview:
    """What the page shows of one model."""

    name: str
    config_file: str
    dag_ids: dict[str, str] = field(default_factory=dict)  # dag kind -> this model's DAG id
    error: str | None = None  # the config does not load (no DAGs)
    champion: str | None = None
    challenger: str | None = None
    registry_error: str | None = None
    rollout: dict[str, Any] | None = None  # the last deploy run's analyse_rollout result, with run_id
    monitoring: list[dict[str, Any]] = field(default_factory=list)  # detect_drift results, oldest first
    last_retrain: dict[str, Any] | None = None  # run_id, state, start, why

    @property
    def last_verdict(self) -> dict[str, Any] | None:
        """The newest monitoring result, if any."""
        return self.monitoring[-1] if self.monitoring else None


def monitoring_point(result: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The chart's and table's view of one ``detect_drift`` result."""
    performance = result.get("performance") or {}
    estimated = result.get("estimated") or {}
    drift = result.get("drift") or {}
    return {
        "run_id": run_id,
        "window_end": str((result.get("window") or {}).get("end", ""))[:10],
        "champion": result.get("champion_version"),
        "drift_share": drift.get("share"),
        "drifted": drift.get("drifted_features") or [],
        "live": performance.get("live"),
        "live_status": performance.get("status"),
        "estimated": estimated.get("roc_auc") if isinstance(estimated.get("roc_auc"), float) else None,
        "explanation": result.get("explanation") or [],
        "html_uri": result.get("html_uri"),
    }


def retrain_reason(extra: dict[str, Any] | None) -> str:
    """Why a training run ran, from the extra of the retrain event that triggered it."""
    if not extra:
        return "by hand or on its schedule"
    if extra.get("source") == "alertmanager":
        return (
            f"alert {extra.get('alertname', '?')} ({', '.join(extra.get('features') or []) or 'no feature'})"
        )
    features = ", ".join(extra.get("drifted_features") or []) or "none"
    performance = (extra.get("performance") or {}).get("status", "?")
    return (
        f"monitoring of the window to {str(extra.get('interval_end', '?'))[:10]}: "
        f"drift share {extra.get('drift_share')}, drifted {features}, live performance {performance}"
    )


def chart(points: list[dict[str, Any]]) -> dict[str, Any]:
    """SVG polylines of live ROC AUC, estimated ROC AUC and drift share (0 to 1) by window."""
    n = len(points)
    inner_w, inner_h = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD

    def xy(i: int, value: float) -> tuple[float, float]:
        x = CHART_PAD + (inner_w * i / (n - 1) if n > 1 else inner_w / 2)
        return round(x, 1), round(CHART_PAD + inner_h * (1 - min(max(value, 0.0), 1.0)), 1)

    series = {}
    for key in ("live", "estimated", "drift_share"):
        coords = [xy(i, p[key]) for i, p in enumerate(points) if isinstance(p.get(key), int | float)]
        series[key] = {"points": " ".join(f"{x},{y}" for x, y in coords), "dots": coords}
    labels = [(xy(i, 0)[0], p["window_end"]) for i, p in enumerate(points)]
    return {
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "pad": CHART_PAD,
        "series": series,
        "labels": labels,
    }


def render(models: list[ModelOverview], *, airflow_url: str, mlflow_url: str | None) -> str:
    """The page: one section per model (``airflow_url``/``mlflow_url`` are the UIs' base URLs)."""
    charts = {m.name: chart(m.monitoring) for m in models}
    return _render(
        "overview.html.j2", models=models, charts=charts, airflow_url=airflow_url.rstrip("/"),
        mlflow_url=(mlflow_url or "").rstrip("/"),
    )  # fmt: skip
