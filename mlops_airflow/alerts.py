"""Alerts from outside Airflow: Alertmanager's webhook turns a firing drift alert into a retrain.

The plugin (``mlops_airflow.plugin``) mounts this FastAPI app on the API server:

    POST /mlops/alerts     Authorization: Bearer <MLOPS_ALERT_TOKEN>

The body is Alertmanager's webhook JSON (version 4). Every *firing* alert with
the label ``mlops_action="retrain"`` creates one event on the
``<model>.retrain`` Asset of the model named by its ``model`` label, which is
the Asset the ``training`` DAG is scheduled on. The event is created the way
Airflow's own ``POST /api/v2/assets/events`` does it. Its extra is
``{"source": "alertmanager", "alertname", "fingerprint", "starts_at",
"features", "summary", "runbook_url"}``. The answer lists what was created,
what was a duplicate and what was ignored.

- **Authenticated**: the token comes from ``MLOPS_ALERT_TOKEN`` or from the file
  named by ``MLOPS_ALERT_TOKEN_FILE``, and is compared in constant time. A
  missing or wrong token gets a 401. With no token configured, every request
  gets a 503: the endpoint is never open by default.
- **Idempotent per alert**: Alertmanager repeats firing alerts and retries
  failed posts. An alert (fingerprint + ``startsAt``) that already has an event
  on the asset creates none. The check and the insert run in one transaction
  holding a row lock on the asset (PostgreSQL); on SQLite, which has no row
  locks and reads outside the write transaction, under a lock of the process
  and a file lock beside the database. So two concurrent posts of the same
  alert, or of one episode, cannot both create one.
- **One retrain per drift episode**, the rule ``decide_retrain`` applies: an
  episode belongs to the serving champion. After a retrain event of the model
  (from an alert or from the monitoring DAG), further alerts for the same
  champion create none until ``cooldown_hours`` have passed
  (``MLOPS_ALERT_COOLDOWN_HOURS``, else the config's
  ``monitoring.retrain.cooldown_hours``); a new champion starts a new episode.
  When the registry cannot say who the champion is, the alert counts as the same
  episode: a storm of retrains costs more than a late one.
- Resolved alerts and alerts without ``mlops_action="retrain"`` are ignored.
  An unknown model gets a 404 and a malformed body a 422, and nothing is
  written, for any alert of the body (every asset is looked up before the
  first event is created, in one transaction).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hmac
import logging
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, ValidationError

from mlops_airflow import registry_reads

log = logging.getLogger(__name__)
TOKEN_ENV, TOKEN_FILE_ENV = "MLOPS_ALERT_TOKEN", "MLOPS_ALERT_TOKEN_FILE"
COOLDOWN_ENV = "MLOPS_ALERT_COOLDOWN_HOURS"
RETRAIN_SOURCES = {"alertmanager", "monitoring"}  # the events that open an episode
ACTION_LABEL, ACTION = "mlops_action", "retrain"
RECENT_EVENTS = 1000  # how far back a repeat is looked for (Alertmanager repeats within hours)


class Alert(BaseModel):
    status: str
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str
    fingerprint: str = Field(min_length=1)


class Notification(BaseModel):
    """Alertmanager's webhook body (the fields used here)."""

    version: str = "4"
    status: str
    alerts: list[Alert]


def configured_token() -> str | None:
    """The shared secret, from the environment or a file (e.g. a mounted Kubernetes secret)."""
    token = os.environ.get(TOKEN_ENV)
    path = os.environ.get(TOKEN_FILE_ENV)
    if not token and path:
        token = Path(path).read_text().strip()
    return token or None


def check_token(authorization: str | None) -> None:
    expected = configured_token()
    if not expected:
        raise HTTPException(
            503, f"alert webhook disabled: set {TOKEN_ENV} (or {TOKEN_FILE_ENV}) on the API server"
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def retrain_requests(notification: Notification) -> tuple[list[Alert], list[dict[str, str]]]:
    """(firing retrain alerts, ignored alerts with the reason)."""
    wanted, ignored = [], []
    for alert in notification.alerts:
        if alert.labels.get(ACTION_LABEL) != ACTION:
            ignored.append({"fingerprint": alert.fingerprint, "reason": f"no {ACTION_LABEL}={ACTION} label"})
        elif alert.status != "firing":
            ignored.append({"fingerprint": alert.fingerprint, "reason": f"status {alert.status}"})
        elif not alert.labels.get("model"):
            ignored.append({"fingerprint": alert.fingerprint, "reason": "no model label"})
        else:
            wanted.append(alert)
    return wanted, ignored


def cooldown_hours(model: str | None = None) -> float:
    """How long an episode of ``model`` lasts: the environment's setting, else the model's config's.

    The model's config is its entry in the catalogue (``MLOPS_CONFIG_DIR``), else ``MLOPS_CONFIG``.
    """
    if os.environ.get(COOLDOWN_ENV):
        return float(os.environ[COOLDOWN_ENV])
    from pipelines.catalogue import find_model
    from pipelines.config import load_config
    from pipelines.settings import Settings

    settings = Settings.from_env()
    entry = find_model(model, settings) if model and settings.config_dir else None
    config = entry.config if entry and entry.config else load_config(settings.config_path)
    return config.monitoring.retrain.cooldown_hours


def serving_champion(model: str) -> str | None:
    """The version behind the ``champion`` alias, or None when the registry cannot say.

    Read with the API server's own MLflow environment (``MLFLOW_TRACKING_URI``, and
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` behind MLflow's auth): the process serves many
    requests at once, so it never swaps connection variables into ``os.environ`` the way a step does.
    """
    from pipelines import tracking
    from pipelines.settings import Settings

    try:
        found = tracking.champion_version(Settings.from_env(), model)
    except Exception as exc:  # the retrain must not hang on the registry: same episode, said why
        log.warning("cannot read the champion of %s (%s): counting the alert as the same episode", model, exc)
        return None
    return None if found is None else str(found.version)


# How long a notification waits on the registry for the champion (MLflow's client retries for
# minutes); the reads run on registry_reads' two threads.
CHAMPION_TIMEOUT_SECONDS = 15.0


def champions_within(models: list[str], seconds: float) -> dict[str, str | None]:
    """:func:`serving_champion` of each model, None (said why) for those the registry has not
    answered within ``seconds`` all told: a body naming many models waits once, not once per model."""
    futures = {model: registry_reads.submit(serving_champion, model) for model in models}
    concurrent.futures.wait(futures.values(), timeout=seconds)
    champions: dict[str, str | None] = {}
    for model, future in futures.items():
        if future.done():
            champions[model] = future.result()
        else:
            future.cancel()  # a read still queued behind a hung one never starts
            log.warning(
                "the registry did not say the champion of %s within %.0f s: same episode", model, seconds
            )
            champions[model] = None
    return champions


def event_extra(alert: Alert, champion: str | None = None) -> dict[str, Any]:
    """The retrain event's extra; ``fingerprint`` + ``starts_at`` identify the alert."""
    feature = alert.labels.get("feature")
    return {
        "source": "alertmanager",
        "champion_version": champion,
        "alertname": alert.labels.get("alertname"),
        "fingerprint": alert.fingerprint,
        "starts_at": alert.startsAt,
        "features": [feature] if feature else [],
        "summary": alert.annotations.get("summary") or alert.annotations.get("description"),
        "runbook_url": alert.annotations.get("runbook_url"),
    }


def _same_episode(event: Any, champion: str | None, cooldown: timedelta, now: datetime) -> bool:
    """Whether ``event`` (a retrain event of this model) opened the episode ``champion`` is in."""
    extra = event.extra or {}
    if extra.get("source") not in RETRAIN_SOURCES or now - event.timestamp >= cooldown:
        return False
    earlier = extra.get("champion_version")
    return champion is None or earlier is None or str(earlier) == champion


def _record(
    session: Any, asset: Any, alert: Alert, champion: str | None, cooldown: timedelta
) -> tuple[str, int]:
    """Create the retrain event of ``alert`` unless it exists or its episode has one already:
    ("created" | "duplicate" | "episode", event id)."""
    from airflow._shared.timezones import timezone
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetEvent
    from sqlalchemy import select

    now = timezone.utcnow()
    recent = list(
        session.scalars(
            select(AssetEvent)
            .where(AssetEvent.asset_id == asset.id)
            .order_by(AssetEvent.id.desc())
            .limit(RECENT_EVENTS)
        )
    )
    for event in recent:
        extra = event.extra or {}
        if extra.get("fingerprint") == alert.fingerprint and extra.get("starts_at") == alert.startsAt:
            return "duplicate", event.id
    for event in recent:
        if (event.extra or {}).get("source") in RETRAIN_SOURCES:  # the newest retrain decides
            if _same_episode(event, champion, cooldown, now):
                return "episode", event.id
            break
    created = asset_manager.register_asset_change(
        asset=asset,
        timestamp=now,
        extra=event_extra(alert, champion),
        source_is_api=True,
        session=session,
    )
    if created is None:
        raise HTTPException(404, f"asset {asset.name!r} is not active")
    session.flush()
    return "created", created.id


_WRITER = threading.Lock()


@contextlib.contextmanager
def _one_writer() -> Iterator[None]:
    """Hold while a transaction checks for an event and creates one (see the module's docstring).

    SQLite takes no row lock (``with_for_update`` is a no-op there) and pysqlite begins the
    transaction at the first write, so two posts could both read "no event yet" and both insert:
    a heat wave's alerts on two features, posted at once, made two retrains. The API server's
    threads wait on a lock; its worker processes (``api-server -w N``) on a file lock.
    """
    from airflow import settings

    with _WRITER:
        url = settings.engine.url if settings.engine is not None else None
        if url is None or url.get_backend_name() != "sqlite" or not url.database:
            yield  # PostgreSQL and MySQL: the asset's row lock serialises the transactions
            return
        with open(f"{url.database}.mlops-alerts.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


app = FastAPI(title="MLOps alert webhook", description=__doc__)


@app.post("/alerts")
async def receive_alerts(request: Request, authorization: str | None = Header(None)) -> dict[str, Any]:
    """Alertmanager webhook: one retrain Asset event per firing alert, at most once per alert.

    The registry and the metadata database are read in a worker thread: this app is mounted in
    Airflow's API server, whose event loop must keep answering the UI while MLflow is slow.
    """
    check_token(authorization)
    try:
        notification = Notification.model_validate_json(await request.body())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10])
        raise HTTPException(422, f"not an Alertmanager webhook body: {problems}") from exc
    return await run_in_threadpool(_act_on, notification)


def _act_on(notification: Notification) -> dict[str, Any]:
    """The retrain events of one notification (blocking: MLflow, then one database transaction)."""
    wanted, ignored = retrain_requests(notification)
    outcomes: dict[str, list[dict[str, Any]]] = {"created": [], "duplicate": [], "episode": []}
    if not wanted:
        return {**outcomes, "ignored": ignored}
    models = sorted({a.labels["model"] for a in wanted})
    # Outside the transaction: the registry may be slow, and the asset rows stay locked meanwhile.
    champions = champions_within(models, CHAMPION_TIMEOUT_SECONDS)
    cooldowns = {model: timedelta(hours=cooldown_hours(model)) for model in models}
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with _one_writer(), create_session() as session:
        assets = {}
        for model in models:  # every asset first: an unknown model writes nothing for any alert
            # the row lock serialises concurrent posts for one model (PostgreSQL); SQLite has one writer
            asset = session.scalar(
                select(AssetModel).where(AssetModel.name == f"{model}.retrain").with_for_update().limit(1)
            )
            if asset is None:
                raise HTTPException(
                    404, f"no asset '{model}.retrain': is the training DAG of model {model!r} deployed?"
                )
            assets[model] = asset
        for alert in wanted:
            model = alert.labels["model"]
            outcome, event_id = _record(session, assets[model], alert, champions[model], cooldowns[model])
            entry = {"fingerprint": alert.fingerprint, "model": model, "event_id": event_id}
            outcomes[outcome].append(entry)
            log.info(
                "alert %s (%s, %s): %s retrain event %s",
                alert.fingerprint,
                alert.labels.get("alertname"),
                alert.labels.get("feature"),
                {"episode": "same episode as"}.get(outcome, outcome),
                event_id,
            )
    return {**outcomes, "ignored": ignored}
