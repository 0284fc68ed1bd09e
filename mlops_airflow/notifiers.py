"""Notifiers: who hears that monitoring asked for a retrain, and what to do about it.

``RetrainNotifier`` is an Airflow notifier (a task callback). It always logs
the message; with a webhook URL (``MLOPS_NOTIFY_WEBHOOK``, or the
``webhook_url`` argument) it also posts ``{"text": ...}`` (``pipelines.notify``).
A failed post is logged, never raised: a notification must not fail the task
that already decided.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseNotifier

from pipelines.notify import WEBHOOK_ENV, post, redacted, retrain_message

__all__ = ["WEBHOOK_ENV", "RetrainNotifier", "redacted", "retrain_message"]


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
        post(retrain_message(result), self.webhook_url, self.timeout)
