"""Notifiers: who hears that monitoring asked for a retrain, and what to do about it.

``RetrainNotifier`` is an Airflow notifier (a task callback). It always logs
the message; with a webhook URL (``MLOPS_NOTIFY_WEBHOOK``, or the
``webhook_url`` argument) it also posts ``{"text": ...}``, the shape Slack,
Mattermost and Teams incoming webhooks accept. A failed post is logged, never
raised: a notification must not fail the task that already decided.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
import urllib.request
from typing import Any

from airflow.sdk import BaseNotifier

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
    return (
        f"Retrain requested for {model}: {result.get('reason')}. "
        f"The training DAG runs on the retrain asset event; its model still has to pass the gate "
        f"and the rollout. Report: {result.get('html_uri') or result.get('report_uri')}. {RUNBOOK}"
    )


class RetrainNotifier(BaseNotifier):
    """Log (always) and post to a webhook (when configured) the retrain decision of a task."""

    template_fields = ("webhook_url",)

    def __init__(self, webhook_url: str | None = None, timeout: float = 10.0):
        super().__init__()
        self.webhook_url = webhook_url
        self.timeout = timeout

    def notify(self, context: dict[str, Any]) -> None:
        ti = context["ti"]
        result = ti.xcom_pull(task_ids=ti.task_id) or {}
        message = retrain_message(result)
        log.warning("%s", message)
        url = self.webhook_url or os.environ.get(WEBHOOK_ENV)
        if not url:
            return
        body = json.dumps({"text": message}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                log.info("notified %s: HTTP %s", redacted(url), response.status)
        except OSError as exc:  # HTTPError and URLError name the status or reason, not the URL
            log.error("could not post the retrain notification to %s: %s", redacted(url), exc)
