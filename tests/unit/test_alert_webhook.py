"""The Alertmanager webhook never stalls the process it is mounted in (Airflow's API server)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "alert-token-for-the-test"


def test_a_hung_registry_does_not_stall_the_api_servers_event_loop(tmp_path):
    """Review 3, M3: the handler was ``async def`` and read the champion from MLflow synchronously:
    while MLflow hung, the API server's event loop answered nothing (no UI, no API) for minutes."""
    hole = socket.socket()  # accepts connections and never answers: a hung MLflow
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}:{ROOT / 'plugins'}",
        "MLOPS_ALERT_TOKEN": TOKEN,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{hole.getsockname()[1]}",
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "mlops_airflow.alerts:app", "--port", str(port),
         "--log-level", "warning"],
        env=env, cwd=tmp_path,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{base}/openapi.json", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the webhook app did not start"
                time.sleep(0.2)
        alert = {
            "status": "firing", "startsAt": "2026-01-01T00:00:00Z", "fingerprint": "f1",
            "labels": {"mlops_action": "retrain", "model": "flights-delay", "alertname": "FeatureDrift"},
        }  # fmt: skip
        body = {"version": "4", "status": "firing", "alerts": [alert]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answers = []
        posted = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{base}/alerts", json=body, headers=headers, timeout=300)
            ),
            daemon=True,
        )
        posted.start()
        time.sleep(1.5)  # the alert is now waiting on the registry
        started = time.monotonic()
        answer = httpx.get(f"{base}/openapi.json", timeout=20)
        assert answer.status_code == 200
        assert time.monotonic() - started < 2, "the event loop waited on the registry"
        # and the notification itself is answered once the champion read gives up (15 s), not after
        # MLflow's client has retried for minutes (here the empty metadata database then fails it)
        posted.join(60)
        assert answers and answers[0].status_code >= 400, "the alert waited on the registry"
    finally:
        server.kill()
        server.wait(10)
        hole.close()
