"""The closed loop through the real scheduler, shortened to two replayed months (the full replay is
the README's main command, ``make demo``)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, QuietHandler, free_port, http_stub

pytestmark = [pytest.mark.e2e, pytest.mark.scheduler]


class _Webhook(QuietHandler):
    """A Slack-style incoming webhook: records what the notifier posts."""

    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture(scope="module")
def webhook():
    with http_stub(_Webhook) as url:
        yield f"{url}/hooks/mlops", _Webhook.received


def _config(folder: Path) -> Path:
    """The bundled config with a lower importance-weighted drift share (0.2, not 0.3), so that
    April (0.28 of the first champion's importance drifted) asks for a retrain and two months
    exercise the whole path: event, training, gate, approval, canary, notification."""
    import yaml

    data = yaml.safe_load((ROOT / "pipelines" / "datasets" / "flights.yaml").read_text())
    data["dataset"]["expectations"] = str(ROOT / "pipelines" / "datasets" / data["dataset"]["expectations"])
    data["monitoring"]["drift"]["share"] = 0.2
    path = folder / "flights-loop-test.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def loop(tmp_path_factory, webhook):
    home = tmp_path_factory.mktemp("loop") / "home"
    config = _config(tmp_path_factory.mktemp("loop-config"))
    cmd = [
        sys.executable, "-m", "mlops_demo.loop", "--home", str(home), "--fresh", "--config", str(config),
        "--first", "2013-04", "--last", "2013-05",
        "--airflow-port", str(free_port()), "--mlflow-port", str(free_port()),
        "--serving-port", str(free_port()),
        "--swing-band", "0.001",  # every retrained candidate swings "wide": its rollout needs approval
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLOPS_NOTIFY_WEBHOOK": webhook[0]}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    (home / "loop-output.txt").write_text(done.stdout + done.stderr)
    return done, home


def _runs(home: Path, dag_id: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        return db.execute(
            "SELECT run_id, run_type, state FROM dag_run WHERE dag_id = ? ORDER BY id", (dag_id,)
        ).fetchall()


def test_the_loop_runs_and_prints_the_month_by_month_table(loop):
    done, home = loop
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "month       rows w.drift est.AUC live AUC  never monthly" in done.stdout
    assert "mean ROC AUC: with the loop" in done.stdout and "a monthly cron 0." in done.stdout
    assert "2013-04: importance-weighted drift 0." in done.stdout  # each month's reasons
    table = json.loads((home / "artifacts" / "loop" / "loop.json").read_text())
    assert [row["month"] for row in table] == ["2013-04", "2013-05"]
    for row in table:
        assert row["rows"] > 20_000 and row["unanswered"] == 0  # every flight got an answer
        assert 0.55 < row["live_auc"] < 0.9 and 0.55 < row["never_retrain_auc"] < 0.9
        assert 0.55 < row["monthly_cron_auc"] < 0.9
        # estimated from the calibrated probabilities before the labels, then checked against them
        assert 0.55 < row["estimated_auc"] < 0.9 and abs(row["estimated_auc"] - row["monitored_auc"]) < 0.1
        assert "importance-weighted drift" in row["reasons"] and "estimated ROC AUC" in row["reasons"]
    html = (home / "artifacts" / "loop" / "loop.html").read_text()
    assert "data:image/png;base64," in html


def test_april_drift_is_detected_and_its_event_starts_training_through_the_scheduler(loop):
    _done, home = loop
    april = json.loads((home / "artifacts" / "loop" / "loop.json").read_text())[0]
    # spring weather against a winter reference: temperature and dew point move by whole stds,
    # and the features that drifted hold more than the 0.2 share of the model's importance
    assert april["weighted_drift"] >= 0.2 and "temp" in april["drifted"]
    assert april["retrain"] == "yes"
    training = _runs(home, "training")
    assert training[0][1] == "manual"  # the first champion
    triggered = [r for r in training if r[1] == "asset_triggered"]
    assert len(triggered) >= 1 and all(state == "success" for _, _, state in triggered)
    monitoring = _runs(home, "monitoring")
    assert len(monitoring) == 2 and {state for _, _, state in monitoring} == {"success"}
    # one event per request; its extra carries the report and the features
    with sqlite3.connect(home / "airflow" / "airflow.db") as db:
        extras = [json.loads(e) for (e,) in db.execute(
            "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            " WHERE a.name = 'flights-delay.retrain' ORDER BY e.id"
        )]  # fmt: skip
    assert len(extras) == len(triggered)
    assert extras[0]["source"] == "monitoring" and "temp" in extras[0]["drifted_features"]
    assert extras[0]["interval_end"].startswith("2013-05-01") and extras[0]["report_uri"].endswith(
        "drift.json"
    )


def test_the_retrained_model_went_through_gate_and_rollout(loop):
    _done, home = loop
    from mlflow import MlflowClient

    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'flights-delay'")
    assert len(versions) >= 2
    history = json.loads(client.get_registered_model("flights-delay").tags["mlops.deployment.history"])
    started = [h for h in history if h["event"] == "rollout_started"]
    assert started and started[0]["version"] == "2" and started[0]["strategy"] == "canary"
    # the rollout of v2 was decided by the canary traffic of May, one way or the other
    assert any(h["event"] in {"promoted", "aborted"} and h["version"] == "2" for h in history)
    may = json.loads((home / "artifacts" / "loop" / "loop.json").read_text())[1]
    assert may["verdict"].endswith("v2")
    assert "v2:" in may["serving"]  # the canary answered part of May's traffic


def test_the_drift_report_and_the_notification_are_there(loop):
    _done, home = loop
    reports = sorted((home / "artifacts" / "monitoring").glob("*/detect_drift/drift.json"))
    assert len(reports) == 2
    report = json.loads(reports[0].read_text())
    temp = next(f for f in report["features"] if f["column"] == "temp")
    assert temp["method"] == "wasserstein" and temp["threshold"] == 0.1 and temp["drifted"] is True
    assert report["performance"]["labelled_rows"] > 20_000
    html = reports[0].with_name("drift.html").read_text()
    assert "data:image/png;base64," in html and "temp" in html
    logs = list((home / "airflow" / "logs").glob("dag_id=monitoring/*/task_id=decide_retrain/*.log"))
    assert any(
        "Retrain requested for flights-delay" in p.read_text() and "Runbook:" in p.read_text() for p in logs
    )


def test_each_retrain_request_is_posted_to_the_webhook(loop, webhook):
    _, home = loop
    _, received = webhook
    requests = [r for r in _runs(home, "training") if r[1] == "asset_triggered"]
    assert len(received) == len(requests) >= 1
    content_type, body = received[0]
    assert content_type == "application/json"
    assert body["text"].startswith("Retrain requested for flights-delay v1: importance-weighted drift 0.")
    assert "drift.html" in body["text"] and "Runbook:" in body["text"]


def test_a_wide_swing_waits_for_a_person_and_the_audit_trail_names_who_approved(loop):
    """The retrained candidate's rollout stops at Airflow's approval task until someone answers
    (here the replay, through the REST API the UI uses); ``mlops audit`` shows the whole story."""
    _, home = loop
    approvals = json.loads((home / "artifacts" / "loop" / "approvals.json").read_text())
    assert approvals, "no rollout waited for approval"
    assert "wider than the swing band" in approvals[0]["body"]
    env = {**os.environ, "MLOPS_HOME": str(home), "MLOPS_CONFIG": str(home / "loop-config.yaml")}
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "audit", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    kinds = [e["kind"] for e in events]
    for kind in ("run_triggered", "gate_decided", "version_registered", "approval_requested", "approved",
                 "rollout_started", "retrain_requested"):  # fmt: skip
        assert kind in kinds, (kind, kinds)
    approved = next(e for e in events if e["kind"] == "approved")
    assert approved["details"]["by"]  # the user who answered
    triggered = [e for e in events if e["kind"] == "run_triggered" and e["trigger"]["type"] == "asset"]
    retrained = [e for e in triggered if e["details"]["pipeline"] == "training"]
    assert retrained and retrained[0]["trigger"]["source"]["system"] == "monitoring"  # drift asked for it
    deployed = [e for e in triggered if e["details"]["pipeline"] == "deploy"]
    assert deployed and deployed[0]["trigger"]["source"] == {
        "system": "dag",
        "dag_id": "training",
        "run_id": deployed[0]["trigger"]["source"]["run_id"],
    }  # a registration started the rollout
    first = next(e for e in events if e["kind"] == "run_triggered")
    assert first["trigger"]["type"] == "manual"  # the replay triggered the first training by hand
