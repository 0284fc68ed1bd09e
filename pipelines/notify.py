"""Notifications: who hears what monitoring saw, and what to do about it.

``post`` sends ``{"text": ...}`` to an incoming webhook (``MLOPS_NOTIFY_WEBHOOK``),
the shape Slack, Mattermost and Teams accept, and always logs the message. A
failed post is logged, never raised: a notification must not fail the step that
already decided. The Airflow notifier (``mlops_airflow.notifiers``) and the
``notify`` retrain mode both go through here.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger(__name__)
WEBHOOK_ENV = "MLOPS_NOTIFY_WEBHOOK"
RUNBOOK = (
    "Runbook: open the drift report; if the shift is a data bug upstream (units, a broken join, "
    "a new source), fix it there and fail the training run; otherwise let the gate and the rollout decide."
)


def redacted(url: str) -> str:
    """The URL as logs may show it: scheme and host. An incoming webhook's path (and query) is its
    secret: whoever reads the task log could post to the channel."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/…"


def retrain_message(result: dict[str, Any]) -> str:
    """One short paragraph: what drifted or decayed, what happens next, where to look, what to do."""
    model = f"{result.get('model_name')} v{result.get('champion_version')}"
    report = result.get("html_uri") or result.get("report_uri")
    if result.get("notify"):
        return (
            f"Monitoring of {model} would retrain: {result.get('reason')}. Nothing was requested "
            f"(monitoring.retrain.mode is notify): trigger the training DAG if you agree. Report: {report}."
        )
    return (
        f"Retrain requested for {model}: {result.get('reason')}. "
        f"The training DAG runs on the retrain asset event; its model still has to pass the gate "
        f"and the rollout. Report: {report}. {RUNBOOK}"
    )


def post(message: str, url: str | None = None, timeout: float = 10.0) -> bool:
    """Log ``message`` and post it to the webhook (``url`` or ``MLOPS_NOTIFY_WEBHOOK``); True if posted."""
    log.warning("%s", message)
    url = url or os.environ.get(WEBHOOK_ENV)
    if not url:
        return False
    body = json.dumps({"text": message}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            log.info("notified %s: HTTP %s", redacted(url), response.status)
            return True
    except OSError as exc:  # HTTPError and URLError name the status or reason, not the URL
        log.error("could not post the notification to %s: %s", redacted(url), exc)
        return False
