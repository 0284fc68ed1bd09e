"""Audit trail: events as JSON files in the artifact store, idempotent, filtered, secret-free."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import free_port, wait_http
from pipelines import audit, audit_cli
from pipelines.settings import Settings

ALERT_EVENT = {
    "uri": "mlops://registry/flights/retrain",
    "extra": {
        "source": "alertmanager",
        "alertname": "FeatureDrift",
        "fingerprint": "a1b2c3",
        "starts_at": "2026-05-01T10:00:00Z",
        "features": ["dep_delay"],
        "summary": "drift",
        "runbook_url": None,
    },
    "source_dag_id": None,
    "source_run_id": None,
}
MONITORING_EVENT = {
    "uri": "mlops://registry/flights/retrain",
    "extra": {
        "source": "monitoring",
        "interval_end": "2013-06-01T00:00:00+00:00",
        "report_uri": "s3://b/monitoring/run/report.json",
        "drifted_features": ["distance"],
        "drift_share": 0.4,
        "champion_version": "3",
        "monitoring_run_id": "scheduled__2013-06-01",
    },
    "source_dag_id": "monitoring",
    "source_run_id": "scheduled__2013-06-01",
}


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.from_env(
        {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_ARTIFACT_ROOT": str(tmp_path / "art")}
    )


class Clock:
    """A settable wall clock for ``audit._now``."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(audit, "_now", fake)
    return fake


def event_files(settings: Settings) -> list[str]:
    root = audit.audit_root(settings)
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def test_record_writes_one_json_file_per_event_in_a_month_folder(settings, clock):
    trigger = audit.trigger_info("manual", user="alice")
    event = audit.record(
        settings, audit.RUN_TRIGGERED, model="flights", run_key="training/manual__1", trigger=trigger
    )
    assert set(event) == {"id", "time", "kind", "model", "run_key", "trigger", "details"}
    assert event["time"] == "2026-05-01T12:00:00.000000+00:00"
    assert event["trigger"] == {"type": "manual", "by": "alice", "asset": None, "source": None}
    stamp = "20260501T120000000000Z"
    assert event_files(settings) == [
        f"2026/05/{stamp}-run_triggered-{event['id']}.json",
        f"ids/{event['id']}.json",
    ]
    assert audit.events(settings) == [event]


def test_unknown_kind_is_refused(settings):
    with pytest.raises(ValueError, match="unknown audit event kind"):
        audit.record(settings, "deleted_everything", model="flights")


def test_events_filter_by_model_time_kind_run_and_version_and_sort_by_time(settings, clock):
    def at(when: datetime, kind: str, model: str = "flights", **kw):
        clock.now = when
        return audit.record(settings, kind, model=model, **kw)

    # recorded out of order, across years and months
    promoted = at(datetime(2026, 3, 2, tzinfo=UTC), audit.PROMOTED, version="4", decision="promote")
    registered = at(datetime(2025, 12, 31, 23, 59, tzinfo=UTC), audit.VERSION_REGISTERED,
                    run_key="training/r1", key="4", version="4")  # fmt: skip
    gate = at(datetime(2025, 12, 31, 23, 0, tzinfo=UTC), audit.GATE_DECIDED, run_key="training/r1",
              decision="pass", reason="beats champion")  # fmt: skip
    other = at(datetime(2026, 1, 15, tzinfo=UTC), audit.PROMOTED, model="taxis", version="4")
    rolled = at(datetime(2026, 4, 1, tzinfo=UTC), audit.ROLLED_BACK, from_version="4", to_version="3")

    assert audit.events(settings) == [gate, registered, other, promoted, rolled]
    assert audit.events(settings, model="flights") == [gate, registered, promoted, rolled]
    assert audit.events(settings, since="2026-01-01") == [other, promoted, rolled]
    assert audit.events(settings, until="2026-01-01") == [gate, registered]
    assert audit.events(settings, since="2026-01", until=datetime(2026, 3, 2, tzinfo=UTC)) == [other]
    assert audit.events(settings, since="2026-03-02T00:00:00Z") == [promoted, rolled]  # inclusive
    assert audit.events(settings, kinds=[audit.PROMOTED]) == [other, promoted]
    assert audit.events(settings, kinds={audit.PROMOTED, audit.GATE_DECIDED}, model="flights") == [
        gate,
        promoted,
    ]
    assert audit.events(settings, run_key="training/r1") == [gate, registered]
    assert audit.events(settings, version=4, model="flights") == [registered, promoted, rolled]
    assert audit.events(settings, version="3") == [rolled]
    assert audit.events(settings, model="nope") == []


def test_events_of_an_empty_store(settings):
    assert audit.events(settings) == []
    assert audit.events(settings, since="2020-01-01", kinds=[audit.APPROVED]) == []


def test_a_retry_returns_the_first_event_and_writes_nothing(settings, clock):
    first = audit.record(
        settings, audit.GATE_DECIDED, model="flights", run_key="training/r1", decision="pass"
    )
    files = event_files(settings)
    clock.now += timedelta(days=40)  # a retry much later, even in another month
    again = audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/r1", decision="x")
    assert again == first
    assert event_files(settings) == files
    assert audit.events(settings) == [first]
    # another run, another model, another kind or another key is another event
    audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/r2")
    audit.record(settings, audit.GATE_DECIDED, model="taxis", run_key="training/r1")
    audit.record(settings, audit.APPROVED, model="flights", run_key="training/r1")
    audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/r1", key="second-model")
    assert len(audit.events(settings)) == 5


def test_key_alone_makes_an_event_idempotent_and_no_key_never_does(settings, clock):
    a = audit.record(settings, audit.RETRAIN_REQUESTED, model="flights", key="report-1")
    assert audit.record(settings, audit.RETRAIN_REQUESTED, model="flights", key="report-1") == a
    for _ in range(2):
        clock.now += timedelta(seconds=1)
        audit.record(settings, audit.ROLLED_BACK, model="flights", reason="bad")
    assert [e["kind"] for e in audit.events(settings)] == ["retrain_requested", "rolled_back", "rolled_back"]


def test_a_retry_heals_a_try_that_died_between_its_two_writes(settings, clock):
    first = audit.record(settings, audit.PROMOTED, model="flights", run_key="deploy/r1", version="5")
    event_file = next(f for f in event_files(settings) if not f.startswith("ids/"))
    os.unlink(os.path.join(audit.audit_root(settings), event_file))
    assert audit.events(settings) == []
    clock.now += timedelta(minutes=5)
    assert audit.record(settings, audit.PROMOTED, model="flights", run_key="deploy/r1", version="5") == first
    assert audit.events(settings) == [first]
    assert event_file in event_files(settings)


def test_readers_show_one_event_per_id_even_if_two_tries_raced(settings, clock):
    first = audit.record(settings, audit.APPROVED, model="flights", run_key="deploy/r1", by="alice")
    # the race: a second try wrote its own file before it could see the first one's index
    os.unlink(os.path.join(audit.audit_root(settings), "ids", f"{first['id']}.json"))
    clock.now += timedelta(seconds=1)
    audit.record(settings, audit.APPROVED, model="flights", run_key="deploy/r1", by="alice")
    assert len([f for f in event_files(settings) if not f.startswith("ids/")]) == 2
    assert audit.events(settings) == [first]


def test_secrets_are_never_written(settings, clock):
    event = audit.record(
        settings,
        audit.APPROVED,
        model="flights",
        run_key="deploy/r1",
        trigger={"type": "manual", "by": "alice", "Authorization": "Bearer tok-AAA"},
        token="tok-BBB",
        Password="pw-CCC",
        api_key="key-DDD",
        approver="alice",
        request={
            "headers": {"authorization": "Bearer tok-EEE", "accept": "json"},
            "aws": [{"AWS_SECRET_ACCESS_KEY": "sec-FFF", "region": "eu"}],
            "MLOPS_ALERT_TOKEN": "tok-GGG",
            "db_password_file": "/run/secrets/x",
        },
        database="postgresql://mlflow:pw-HHH@db:5432/mlflow",
    )
    raw = "".join(Path(audit.audit_root(settings), name).read_text() for name in event_files(settings))
    for secret in ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "/run/secrets"):
        assert secret not in raw
    assert event["details"] == {
        "approver": "alice",
        "request": {"headers": {"accept": "json"}, "aws": [{"region": "eu"}]},
        "database": "postgresql://mlflow:***@db:5432/mlflow",
    }
    assert event["trigger"] == {"type": "manual", "by": "alice"}
    assert audit.events(settings) == [event]


@pytest.mark.parametrize(
    ("run_type", "user", "asset_events", "expected"),
    [
        ("scheduled", None, None, {"type": "schedule", "by": "scheduler", "asset": None, "source": None}),
        ("manual", "alice", None, {"type": "manual", "by": "alice", "asset": None, "source": None}),
        ("manual", None, None, {"type": "manual", "by": None, "asset": None, "source": None}),
        ("backfill", "bob", None, {"type": "backfill", "by": "bob", "asset": None, "source": None}),
        ("operator_triggered", None, None, {"type": "manual", "by": None, "asset": None, "source": None}),
        ("new_type", "carol", None, {"type": "new_type", "by": "carol", "asset": None, "source": None}),
        ("asset_triggered", None, [], {"type": "asset", "by": None, "asset": None, "source": None,
                                       "events": 0}),
    ],
)  # fmt: skip
def test_trigger_of_runs_without_asset_events(run_type, user, asset_events, expected):
    assert audit.trigger_info(run_type, user=user, asset_events=asset_events) == expected


def test_trigger_accepts_airflow_run_type_enums():
    from airflow.utils.types import DagRunType

    assert audit.trigger_info(DagRunType.SCHEDULED)["type"] == "schedule"
    assert audit.trigger_info(DagRunType.ASSET_TRIGGERED, asset_events=[ALERT_EVENT])["type"] == "alert"
    assert audit.trigger_info(DagRunType.BACKFILL_JOB, user="bob")["type"] == "backfill"


def test_trigger_of_an_alert_names_alertmanager_and_the_alert():
    info = audit.trigger_info("asset_triggered", asset_events=[ALERT_EVENT])
    assert info == {
        "type": "alert",
        "by": "mlops://registry/flights/retrain",
        "asset": "mlops://registry/flights/retrain",
        "source": {
            "system": "alertmanager",
            "alertname": "FeatureDrift",
            "fingerprint": "a1b2c3",
            "starts_at": "2026-05-01T10:00:00Z",
            "features": ["dep_delay"],
        },
        "events": 1,
    }


def test_trigger_of_a_monitoring_request_names_the_report():
    info = audit.trigger_info("asset_triggered", asset_events=[MONITORING_EVENT])
    assert info == {
        "type": "asset",
        "by": "mlops://registry/flights/retrain",
        "asset": "mlops://registry/flights/retrain",
        "source": {
            "system": "monitoring",
            "report_uri": "s3://b/monitoring/run/report.json",
            "drifted_features": ["distance"],
            "champion_version": "3",
            "dag_id": "monitoring",
            "run_id": "scheduled__2013-06-01",
        },
        "events": 1,
    }


def test_trigger_of_several_events_prefers_the_alert_and_counts_them():
    upstream = {"uri": "mlops://data/flights", "extra": {}, "source_dag_id": "ingest", "source_run_id": "r9"}
    info = audit.trigger_info("asset_triggered", asset_events=[upstream, MONITORING_EVENT, ALERT_EVENT])
    assert (info["type"], info["source"]["system"], info["events"]) == ("alert", "alertmanager", 3)
    info = audit.trigger_info("asset_triggered", asset_events=[upstream])
    assert info["type"] == "asset"
    assert info["by"] == info["asset"] == "mlops://data/flights"
    assert info["source"] == {"system": "dag", "dag_id": "ingest", "run_id": "r9"}
    api = {"uri": "mlops://x", "extra": {"token": "tok-ZZZ"}, "source_dag_id": None, "source_run_id": None}
    assert audit.trigger_info("asset_triggered", asset_events=[api])["source"] == {"system": "api"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlops")
    sub = parser.add_subparsers(dest="command", required=True)
    audit_cli.add_parser(sub)
    return parser.parse_args(["audit", *argv])


@pytest.fixture
def trail(settings, clock, monkeypatch):
    """Three events of a retrain episode; the CLI finds the store through the environment."""
    monkeypatch.setenv("MLOPS_ARTIFACT_ROOT", settings.artifact_root)
    alert = audit.trigger_info("asset_triggered", asset_events=[ALERT_EVENT])
    clock.now = datetime(2026, 5, 1, 10, 1, tzinfo=UTC)
    audit.record(settings, audit.RUN_TRIGGERED, model="flights", run_key="training/a1", trigger=alert)
    clock.now = datetime(2026, 5, 1, 10, 30, tzinfo=UTC)
    audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/a1", trigger=alert,
                 decision="pass", reason="accuracy 0.81 >= champion 0.79", version="7")  # fmt: skip
    clock.now = datetime(2026, 5, 2, 9, 0, tzinfo=UTC)
    manual = audit.trigger_info("manual", user="alice")
    audit.record(settings, audit.APPROVED, model="flights", run_key="deploy/m1", trigger=manual,
                 version="7", decision="approve")  # fmt: skip
    return settings


def test_cli_prints_a_table(trail, capsys):
    args = parse()
    assert args.func is audit_cli.command
    assert audit_cli.command(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["time", "(UTC)", "kind", "model", "version", "trigger", "decision", "/",
                                "reason", "run"]  # fmt: skip
    assert len(lines) == 4
    assert lines[1].startswith("2026-05-01 10:01:00  run_triggered")
    assert "alert/mlops://registry/flights/retrain" in lines[1]
    assert "training/a1" in lines[1]
    assert "pass: accuracy 0.81 >= champion 0.79" in lines[2]
    assert " 7 " in lines[2]
    assert "manual/alice" in lines[3] and "approve" in lines[3] and "deploy/m1" in lines[3]


def test_cli_prints_json_lines_and_filters(trail, capsys):
    assert (
        audit_cli.command(parse("--json", "--kind", "gate_decided", "--kind", "approved", "--version", "7"))
        == 0
    )
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["kind"] for e in printed] == ["gate_decided", "approved"]
    assert printed[0]["trigger"]["source"]["fingerprint"] == "a1b2c3"

    assert audit_cli.command(parse("--json", "--since", "2026-05-02", "--model", "flights")) == 0
    assert [json.loads(x)["kind"] for x in capsys.readouterr().out.splitlines()] == ["approved"]
    assert audit_cli.command(parse("--json", "--until", "2026-05-01T10:30")) == 0
    assert [json.loads(x)["kind"] for x in capsys.readouterr().out.splitlines()] == ["run_triggered"]

    assert audit_cli.command(parse("--model", "taxis")) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no audit events" in captured.err


def test_cli_refuses_bad_dates_and_kinds(capsys):
    with pytest.raises(SystemExit):
        parse("--since", "last tuesday")
    with pytest.raises(SystemExit):
        parse("--kind", "deleted")
    assert "invalid choice" in capsys.readouterr().err


def test_concurrent_records_lose_nothing(settings):
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            for j in range(5):
                audit.record(settings, audit.RUN_TRIGGERED, model="flights", run_key=f"training/r{i}-{j}")
                audit.record(settings, audit.ROLLED_BACK, model="flights", reason=f"thread {i} #{j}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    found = audit.events(settings)
    assert len(found) == 80
    assert len({e["id"] for e in found}) == 80
    assert {e["run_key"] for e in found if e["run_key"]} == {
        f"training/r{i}-{j}" for i in range(8) for j in range(5)
    }


def test_concurrent_records_of_the_same_event_show_once(settings):
    barrier = threading.Barrier(8)
    results: list[dict] = []

    def work() -> None:
        barrier.wait()
        results.append(
            audit.record(settings, audit.PROMOTED, model="flights", run_key="deploy/r1", version="2")
        )

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len(audit.events(settings)) == 1


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """moto's S3 server on loopback with a bucket; AWS_ENDPOINT_URL points at it."""
    import boto3

    port = free_port()
    with open(tmp_path / "moto.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url, 60)
        for key, value in {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="audit")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_trail_on_s3(s3, tmp_path, clock):
    import boto3

    settings = Settings.from_env({"MLOPS_HOME": str(tmp_path), "MLOPS_ARTIFACT_ROOT": "s3://audit/mlops"})
    gate = audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/r1", decision="pass")
    clock.now += timedelta(days=31)
    promoted = audit.record(settings, audit.PROMOTED, model="flights", run_key="deploy/r1", version="2")
    assert audit.record(settings, audit.GATE_DECIDED, model="flights", run_key="training/r1") == gate
    assert audit.events(settings) == [gate, promoted]
    assert audit.events(settings, since="2026-06-01") == [promoted]
    assert audit.events(settings, kinds=[audit.GATE_DECIDED]) == [gate]

    # another process writing meanwhile is seen: no stale listing
    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="audit")["Contents"])
    assert keys == sorted([
        f"mlops/audit/2026/05/20260501T120000000000Z-gate_decided-{gate['id']}.json",
        f"mlops/audit/2026/06/20260601T120000000000Z-promoted-{promoted['id']}.json",
        f"mlops/audit/ids/{gate['id']}.json",
        f"mlops/audit/ids/{promoted['id']}.json",
    ])  # fmt: skip
    extra = dict(gate, id="f" * 32, kind=audit.APPROVED, time="2026-06-02T00:00:00.000000+00:00")
    boto3.client("s3").put_object(
        Bucket="audit",
        Key=f"mlops/audit/2026/06/20260602T000000000000Z-approved-{'f' * 32}.json",
        Body=json.dumps(extra).encode(),
    )
    assert audit.events(settings) == [gate, promoted, extra]
