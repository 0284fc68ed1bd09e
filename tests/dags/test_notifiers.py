"""The retrain notifier posts to a real HTTP server and never writes the webhook's secret to a log."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import QuietHandler, http_stub
from mlops_airflow.notifiers import RetrainNotifier, redacted

SECRET_PATH = "/services/T0001/B0002/xoxb-very-secret-part"
RESULT = {"model_name": "flights-delay", "champion_version": "3", "reason": "drift in 4/10 features"}


class _Ti:
    """The one method of a TaskInstance the notifier calls."""

    task_id = "decide_retrain"

    def xcom_pull(self, task_ids: str) -> dict:
        assert task_ids == self.task_id
        return RESULT


@pytest.fixture
def hook():
    received: list[tuple[str, dict]] = []

    class Handler(QuietHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            received.append((self.path, body))
            self.send_response(200 if self.path.startswith(SECRET_PATH) else 404)
            self.end_headers()

    with http_stub(Handler) as url:
        yield url, received


def test_the_notification_arrives_and_the_log_hides_the_secret(hook, caplog):
    base, received = hook
    caplog.set_level(logging.INFO, logger="pipelines.notify")
    RetrainNotifier(webhook_url=base + SECRET_PATH + "?token=abc").notify({"ti": _Ti()})
    ((path, body),) = received
    assert path.startswith(SECRET_PATH) and "drift in 4/10 features" in body["text"]
    assert "HTTP 200" in caplog.text and base in caplog.text
    assert "xoxb" not in caplog.text and "T0001" not in caplog.text and "abc" not in caplog.text
    caplog.clear()
    RetrainNotifier(webhook_url=base + "/services/T0001/B0002/wrong").notify({"ti": _Ti()})
    assert "could not post" in caplog.text and "T0001" not in caplog.text


def test_redacted_keeps_only_scheme_and_host():
    assert redacted("https://hooks.slack.com/services/T/B/secret?x=1") == "https://hooks.slack.com/…"
    assert redacted("https://user:pw@example.com:8443/a") == "https://example.com:8443/…"
