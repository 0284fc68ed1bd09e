"""The "Models" page of the Airflow UI: every model of the catalogue on one page.

``GET /mlops/models`` on the API server (the plugin mounts it, and adds it to the UI's navigation
as an external view), for a signed-in user (Airflow's own token, the UI's cookie). For each model
it reads the registry's ``champion``/``challenger`` aliases, its monitoring runs' ``detect_drift``
results, its last deploy run's ``analyse_rollout`` result and its last training run with the
retrain event that started it, from Airflow's metadata database; :mod:`pipelines.overview`
renders them.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from mlops_airflow import registry_reads

log = logging.getLogger(__name__)
router = APIRouter()
MONITORING_WINDOWS = 24  # the chart's newest windows per model
REGISTRY_TIMEOUT_SECONDS = 5.0  # a hung registry shows as an error on the page, not a hung page

# The page, in the UI's navigation (an iframe at /plugin/mlops-models)
EXTERNAL_VIEW = {
    "name": "Models",
    "href": "/mlops/models",
    "url_route": "mlops-models",
    "destination": "nav",
    "category": "browse",
}


async def signed_in(request: Request) -> Any:
    """The Airflow user of the request (the UI's token cookie, or a bearer token); 401 without one."""
    from airflow.api_fastapi.core_api.security import get_user  # the API server's own check
    from fastapi.security import HTTPAuthorizationCredentials
    from fastapi.security.utils import get_authorization_scheme_param

    scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
    bearer = HTTPAuthorizationCredentials(scheme=scheme, credentials=token) if scheme and token else None
    return await get_user(request, None, bearer)


SIGNED_IN = Depends(signed_in)


@router.get("/models", response_class=HTMLResponse, summary="Every model: serving, rollout, monitoring")
async def models_page(request: Request, user: Any = SIGNED_IN) -> HTMLResponse:
    """The page (see the module's docstring)."""
    return HTMLResponse(await run_in_threadpool(page, str(request.base_url)))


def page(base_url: str) -> str:
    """The page's HTML, with links into the Airflow UI at ``base_url`` and MLflow's UI."""
    from pipelines import overview
    from pipelines.catalogue import load_catalogue

    tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
    mlflow_url = os.environ.get("MLOPS_MLFLOW_UI_URL") or (tracking if tracking.startswith("http") else None)
    models = [model_overview(entry) for entry in load_catalogue()]
    return overview.render(models, airflow_url=base_url, mlflow_url=mlflow_url)


def model_overview(entry: Any) -> Any:
    """One model's facts: its registry aliases and the results of its DAG runs."""
    from pipelines.overview import ModelOverview

    view = ModelOverview(name=entry.name, config_file=str(entry.path), error=entry.error)
    if entry.config is None:
        return view
    view.dag_ids = {kind: entry.dag_id(kind) for kind in ("training", "deploy", "monitoring")}
    view.champion, view.challenger, view.registry_error = aliases(entry.name)
    view.monitoring = monitoring_points(view.dag_ids["monitoring"])
    view.rollout = last_rollout(view.dag_ids["deploy"])
    view.last_retrain = last_training(view.dag_ids["training"])
    return view


def aliases(name: str) -> tuple[str | None, str | None, str | None]:
    """(champion, challenger, error) of a registered model; a slow or failing registry is an error."""
    from pipelines import tracking
    from pipelines.settings import Settings

    def read() -> tuple[str | None, str | None]:
        found = tracking.client(Settings.from_env()).get_registered_model(name).aliases
        return (
            str(found["champion"]) if "champion" in found else None,
            str(found["challenger"]) if "challenger" in found else None,
        )

    future = registry_reads.submit(read)
    try:
        champion, challenger = future.result(REGISTRY_TIMEOUT_SECONDS)
        return champion, challenger, None
    except FutureTimeout:
        future.cancel()  # still queued behind a hung read: it never starts
        return None, None, f"the registry did not answer within {REGISTRY_TIMEOUT_SECONDS:g} s"
    except Exception as exc:  # not registered yet, or the registry is down: said on the page
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, None, text[:300]


def _results(dag_id: str, task_id: str, limit: int) -> list[tuple[Any, dict[str, Any]]]:
    """(run, result) of the newest runs of ``dag_id`` whose ``task_id`` returned a result, oldest first."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(DagRun, XComModel)
            .join(XComModel, (XComModel.dag_id == DagRun.dag_id) & (XComModel.run_id == DagRun.run_id))
            .where(DagRun.dag_id == dag_id, XComModel.task_id == task_id, XComModel.key == "return_value")
            .order_by(DagRun.id.desc())
            .limit(limit)
        ).all()
        out = [(run, XComModel.deserialize_value(xcom)) for run, xcom in rows]
        for run, _ in out:
            session.expunge(run)
    return [(run, value) for run, value in reversed(out) if isinstance(value, dict)]


def monitoring_points(dag_id: str) -> list[dict[str, Any]]:
    """The newest monitoring verdicts, by the window they judged."""
    from pipelines.overview import monitoring_point

    points = [monitoring_point(result, run.run_id) for run, result in _results(dag_id, "detect_drift", 100)]
    return sorted(points, key=lambda p: p["window_end"])[-MONITORING_WINDOWS:]


def last_rollout(dag_id: str) -> dict[str, Any] | None:
    """The last deploy run's rollout progress or verdict."""
    found = _results(dag_id, "analyse_rollout", 1)
    if not found:
        return None
    run, result = found[-1]
    return {**result, "run_id": run.run_id}


def last_training(dag_id: str) -> dict[str, Any] | None:
    """The last training run, and why it ran (the extra of the retrain event that started it)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from pipelines.overview import retrain_reason

    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == dag_id).order_by(DagRun.id.desc()).limit(1)
        ).first()
        if run is None:
            return None
        events = list(getattr(run, "consumed_asset_events", None) or [])
        extra = next((e.extra for e in events if (e.extra or {}).get("source")), None)
        start = run.start_date or run.run_after
        return {
            "run_id": run.run_id,
            "state": str(run.state),
            "start": f"{start:%Y-%m-%d %H:%M}" if start else "-",
            "why": retrain_reason(extra) if events else f"{run.run_type}: by hand or on its schedule",
        }
