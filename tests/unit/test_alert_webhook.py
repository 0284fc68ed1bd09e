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
        alerts = [
            {
                "status": "firing",
                "startsAt": "2026-01-01T00:00:00Z",
                "fingerprint": f"f{i}",
                "labels": {"mlops_action": "retrain", "model": model, "alertname": "FeatureDrift"},
            }
            for i, model in enumerate(["flights-delay", "churn", "fraud", "demand"])
        ]
        body = {"version": "4", "status": "firing", "alerts": alerts}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        answers = []
        posted_at = time.monotonic()
        posted = threading.Thread(
            target=lambda: answers.append(
                (httpx.post(f"{base}/alerts", json=body, headers=headers, timeout=300), time.monotonic())
            ),
            daemon=True,
        )
        posted.start()
        time.sleep(1.5)  # the alert is now waiting on the registry
        started = time.monotonic()
        answer = httpx.get(f"{base}/openapi.json", timeout=20)
        assert answer.status_code == 200
        assert time.monotonic() - started < 2, "the event loop waited on the registry"
        # and the notification itself is answered once the champion reads give up (15 s for the
        # whole body, not 15 s per model named in it, nor MLflow's minutes of retries); here the
        # empty metadata database then fails it
        posted.join(90)
        assert answers, "the alert waited on the registry"
        answer, answered_at = answers[0]
        assert answer.status_code >= 400
        assert answered_at - posted_at < 35, f"four models waited {answered_at - posted_at:.0f} s"
    finally:
        server.kill()
        server.wait(10)
        hole.close()


def test_concurrent_posts_of_one_episode_create_one_retrain_event(airflow_db, tmp_path, monkeypatch):
    """CI, 2026-12-07: Alertmanager posted two feature alerts of one heat wave at once and the
    webhook created two retrain events. On SQLite the episode check read outside the write
    transaction (no row lock there), so both posts saw no event and both created one."""
    from concurrent.futures import ThreadPoolExecutor

    from airflow.models.asset import AssetActive, AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    from mlops_airflow import alerts

    # no registry answers: the champion is unknown, which counts as the same episode
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(alerts.COOLDOWN_ENV, "24")
    rounds, posts = 3, 6
    for round_ in range(rounds):
        model = f"race-{round_}-{os.getpid()}"
        with create_session() as session:
            asset = AssetModel(name=f"{model}.retrain", uri=f"mlops://{model}/retrain", group="asset")
            session.add(asset)
            session.flush()
            session.add(AssetActive.for_asset(asset))
            asset_id = asset.id
        bodies = [
            alerts.Notification(status="firing", alerts=[alerts.Alert(
                status="firing", startsAt="2026-01-01T00:00:00Z", fingerprint=f"{model}-{i}",
                labels={"mlops_action": "retrain", "model": model, "feature": f"f{i}"})])
            for i in range(posts)
        ]  # fmt: skip
        barrier = threading.Barrier(posts)

        def post(body, barrier=barrier):
            barrier.wait()
            return alerts._act_on(body)

        with ThreadPoolExecutor(posts) as pool:
            answers = list(pool.map(post, bodies))
        with create_session() as session:
            events = session.scalar(select(func.count()).where(AssetEvent.asset_id == asset_id))
        assert events == 1, f"round {round_}: {events} events for one episode: {answers}"
        assert sum(len(a["created"]) for a in answers) == 1
        assert sum(len(a["episode"]) for a in answers) == posts - 1
