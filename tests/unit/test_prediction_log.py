"""The prediction log: durable appends, crash recovery, compaction, feedback joins, PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from pipelines.prediction_log import ParquetPredictionLog, SqlPredictionLog, with_feedback


def rows(request_id: str, n: int = 2, version: str = "1", model: str = "m") -> list[dict]:
    now = time.time() * 1000
    return [
        {
            "request_id": request_id,
            "row": r,
            "ts": now,
            "model_name": model,
            "model_version": version,
            "route": "champion",
            "routing_key": None,
            "rollout_id": None,
            "probability": 0.25 + r / 10,
            "prediction": r % 2,
            "latency_ms": 1.5,
            "inputs": {"temp": 40.0 + r, "carrier": "UA"},
        }
        for r in range(n)
    ]


def test_rows_are_readable_before_and_after_compaction(tmp_path):
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    log.append(rows("a") + rows("b", 3))
    pending = log.read()
    assert len(pending) == 5 and list(pending["input.temp"][:2]) == [40.0, 41.0]
    log.flush()
    assert not list((tmp_path / "spool").glob("*.jsonl"))
    parts = list((tmp_path / "store" / "predictions").glob("date=*/*.parquet"))
    assert len(parts) == 1
    compacted = log.read()
    assert sorted(compacted["request_id"]) == ["a", "a", "b", "b", "b"]
    assert compacted["model_version"].tolist() == ["1"] * 5
    log.close()


def test_segments_rotate_by_size(tmp_path):
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool", segment_rows=4)
    for i in range(5):
        log.append(rows(f"r{i}"))
    log.close()
    assert len(log.read()) == 10
    assert len(list((tmp_path / "store" / "predictions").glob("date=*/*.parquet"))) >= 2


WRITER = """
import sys, time
from pipelines.prediction_log import ParquetPredictionLog
log = ParquetPredictionLog(sys.argv[1], sys.argv[2])
for i in range(100000):
    now = time.time() * 1000
    log.append([{"request_id": f"r{i}", "row": 0, "ts": now, "model_name": "m", "model_version": "1",
                 "route": "champion", "probability": 0.5, "prediction": 1, "latency_ms": 1.0,
                 "inputs": {"x": float(i)}}])
    print(f"r{i}", flush=True)  # the acknowledgement, sent only after append returned
"""


def test_acknowledged_rows_survive_kill_9_and_are_recovered_once(tmp_path):
    store, spool = str(tmp_path / "store"), tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, store, str(spool)], stdout=subprocess.PIPE, text=True
    )
    acked = []
    for line in proc.stdout:
        acked.append(line.strip())
        if len(acked) == 2000:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]  # anything already printed
    # a torn last line, as a crash in the middle of a write leaves it
    segment = next(spool.glob("*.open.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b'{"request_id": "torn", "row": 0, "ts"')
    recovered = ParquetPredictionLog(store, spool)  # a new writer recovers the dead one's segment
    frame = recovered.read()
    recovered.close()
    assert set(acked) <= set(frame["request_id"])
    assert frame["request_id"].is_unique
    assert "torn" not in set(frame["request_id"])
    assert not list(spool.glob("*.jsonl"))


def test_a_live_writers_segment_is_not_taken_over(tmp_path):
    writer = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    writer.append(rows("live"))
    reader_writer = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")  # e.g. a second worker
    assert list((tmp_path / "spool").glob("*.open.jsonl")), "the live segment must stay where it is"
    assert set(reader_writer.read()["request_id"]) == {"live"}
    writer.close()
    reader_writer.close()


def test_feedback_joins_by_request_and_row_and_the_last_label_wins(tmp_path):
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    log.append(rows("a", 3))
    now = time.time() * 1000
    log.append_feedback([{"request_id": "a", "row": 0, "label": 1, "ts": now}])
    log.append_feedback([{"request_id": "a", "row": 0, "label": 0, "ts": now + 5}])
    log.append_feedback([{"request_id": "a", "row": 2, "label": 1, "ts": now}])
    joined = with_feedback(log.read(), log.read_feedback()).sort_values("row")
    assert joined["label"].tolist()[0] == 0 and joined["label"].tolist()[2] == 1
    assert pd.isna(joined["label"].tolist()[1])
    log.close()


@pytest.fixture
def pg_log(pg_url):
    name = f"test-{uuid.uuid4().hex[:8]}"
    log = SqlPredictionLog(pg_url, name)  # pg_url has connected already: PostgreSQL is there
    yield log
    with log.engine.begin() as conn:
        conn.execute(log.predictions.delete().where(log.predictions.c.model_name == name))
    log.close()


def test_postgresql_log_commits_reads_and_upserts_feedback(pg_log):
    rid = uuid.uuid4().hex
    pg_log.append(rows(rid, 3, model=pg_log.model_name))
    pg_log.append(rows(rid, 3, model=pg_log.model_name))  # a retried batch does not duplicate rows
    frame = pg_log.read()
    mine = frame[frame["request_id"] == rid]
    assert len(mine) == 3 and mine["input.temp"].tolist() == [40.0, 41.0, 42.0]
    now = time.time() * 1000
    pg_log.append_feedback([{"request_id": rid, "row": 1, "label": 1, "ts": now}])
    pg_log.append_feedback([{"request_id": rid, "row": 1, "label": 0, "ts": now + 1}])
    joined = with_feedback(mine, pg_log.read_feedback())
    assert joined.set_index("row")["label"].tolist()[1] == 0
    assert pg_log.read(start=pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)).empty


def _dated(request_id: str, event_time: str | None) -> list[dict]:
    out = rows(request_id, 2)
    for row in out:
        row["event_time"] = None if event_time is None else pd.Timestamp(event_time).timestamp() * 1000
    return out


@pytest.mark.parametrize("store", ["parquet", "postgresql"])
def test_windows_can_be_read_on_the_event_clock(tmp_path, store, request):
    """A replay dates its traffic: the event clock windows on that, falling back to answer time."""
    if store == "parquet":
        log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
        make = _dated
    else:
        log = request.getfixturevalue("pg_log")

        def make(rid, when):
            out = _dated(rid, when)
            for row in out:
                row["model_name"] = log.model_name
            return out

    april, may = uuid.uuid4().hex, uuid.uuid4().hex
    live = uuid.uuid4().hex
    log.append(make(april, "2013-04-10T08:00:00Z") + make(may, "2013-05-02T08:00:00Z") + make(live, None))
    log.flush()
    in_april = log.read("2013-04-01", "2013-05-01", clock="event_time")
    assert set(in_april["request_id"]) == {april}
    assert in_april["event_time"].iloc[0] == pd.Timestamp("2013-04-10T08:00:00Z")
    # on the server's clock everything happened now; undated rows fall back to it on either clock
    now = pd.Timestamp.now(tz="UTC")
    recent = log.read(now - pd.Timedelta(hours=1), now + pd.Timedelta(hours=1), clock="event_time")
    assert live in set(recent["request_id"]) and april not in set(recent["request_id"])
    answered = log.read(now - pd.Timedelta(hours=1), now + pd.Timedelta(hours=1))
    assert {april, may, live} <= set(answered["request_id"])
    with pytest.raises(ValueError, match="unknown clock"):
        log.read(clock="wall")
    if store == "parquet":
        log.close()


# -- a write that fails half-way, and the writer's own threads ---------------------------------------
def test_a_torn_write_does_not_swallow_the_next_acknowledged_rows(tmp_path, monkeypatch):
    """Regression: a short os.write then ENOSPC left half a line in the segment; the next append was
    glued onto it, and both readers dropped the merged line: a request that got 200 was gone."""
    import errno

    import pipelines.prediction_log.parquet as module

    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    log.append(rows("before"))
    real_write, calls = os.write, []

    def failing_write(fd, data):
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(module.os, "write", failing_write)
    with pytest.raises(OSError):
        log.append(rows("lost", 3))  # not acknowledged: the caller answers 503
    monkeypatch.setattr(module.os, "write", real_write)
    log.append(rows("after"))  # acknowledged
    # every row of both acknowledged appends, and nothing of the failed one (it was never answered)
    assert log.read()["request_id"].value_counts().to_dict() == {"before": 2, "after": 2}
    log.close()
    assert log.read()["request_id"].value_counts().to_dict() == {"before": 2, "after": 2}


def test_a_bad_line_before_the_last_fails_the_read_loudly(tmp_path):
    """Only the last line can be torn (a write that never returned); a bad line before it means the
    file was damaged, and dropping it silently would lose acknowledged rows."""
    spool = tmp_path / "spool"
    spool.mkdir()
    good = b'{"request_id": "x", "row": 0, "ts": 1.7e12, "model_version": "1", "route": "champion"}\n'
    (spool / "20260101T000000-aaaaaaaaaaaa.jsonl").write_bytes(good + b'{"request_id": "y", "ro\n' + good)
    log = ParquetPredictionLog(str(tmp_path / "store"), spool, writer=False)
    with pytest.raises(ValueError, match=r"line 2 .* is damaged"):
        log.read()
    (spool / "20260101T000000-aaaaaaaaaaaa.jsonl").write_bytes(good + b'{"request_id": "y", "ro')
    assert log.read()["request_id"].tolist() == ["x"]  # a torn last line is skipped


def test_a_segment_is_locked_before_anyone_can_see_it(tmp_path, monkeypatch):
    """Regression: the segment was created under its .open.jsonl name, then locked; another worker's
    recovery in between found it unlocked and renamed it away under the writer."""
    import fcntl

    import pipelines.prediction_log.parquet as module

    spool = tmp_path / "spool"
    seen = []
    real_flock = fcntl.flock

    def flock(fd, op):
        seen.append(sorted(p.name for p in spool.glob("*.open.jsonl")))
        return real_flock(fd, op)

    log = ParquetPredictionLog(str(tmp_path / "store"), spool)
    monkeypatch.setattr(module.fcntl, "flock", flock)
    log.append(rows("a"))
    monkeypatch.setattr(module.fcntl, "flock", real_flock)
    assert seen == [[]], "an unlocked .open.jsonl segment was visible"
    assert len(list(spool.glob("*.open.jsonl"))) == 1
    log.close()
    assert log.read()["request_id"].tolist() == ["a", "a"]


def test_the_rotation_thread_survives_an_error(tmp_path, monkeypatch):
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool", segment_seconds=0.1)
    real_seal, failures = log._seal, []

    def seal_once_failing():
        if not failures:
            failures.append(1)
            raise OSError("transient")
        return real_seal()

    monkeypatch.setattr(log, "_seal", seal_once_failing)
    log.append(rows("a"))
    deadline = time.time() + 10
    while list((tmp_path / "spool").glob("*.jsonl")) and time.time() < deadline:
        time.sleep(0.1)
    assert failures and log._thread.is_alive()
    assert not list((tmp_path / "spool").glob("*.jsonl")), "rotation stopped after one error"
    log.close()


def test_compactions_use_a_bounded_number_of_threads(tmp_path, monkeypatch):
    import threading

    import pipelines.prediction_log.parquet as module

    release = threading.Event()
    real_write = module.storage.write_parquet

    def slow_write(*args, **kwargs):
        release.wait(30)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(module.storage, "write_parquet", slow_write)
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool", segment_rows=2)
    before = threading.active_count()
    for i in range(20):  # 20 sealed segments while the store is slow
        log.append(rows(f"r{i}"))
    grown = threading.active_count() - before
    release.set()
    log.close()
    assert grown <= 2, f"{grown} threads for 20 compactions"
    assert len(set(log.read()["request_id"])) == 20


def test_a_segment_a_writer_never_named_is_removed_on_recovery(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / ".20260101T000000-aaaaaaaaaaaa.new").write_bytes(b"")  # died between create and rename
    log = ParquetPredictionLog(str(tmp_path / "store"), spool)
    assert not list(spool.glob(".*.new"))
    log.close()


def test_a_hung_postgresql_fails_an_append_in_seconds(pg_log, pg_url, monkeypatch):
    """Regression: no statement timeout, so a locked table held every request that waits on the log
    (and the model thread behind it) for as long as the lock lasted."""
    import sqlalchemy as sa

    import pipelines.prediction_log.postgres as module

    monkeypatch.setattr(module, "STATEMENT_TIMEOUT_SECONDS", 2)
    log = SqlPredictionLog(pg_url, pg_log.model_name)  # a fresh engine with the short deadline
    locker = sa.create_engine(pg_url)
    try:
        with locker.begin() as conn:
            conn.execute(sa.text("LOCK TABLE mlops_predictions IN ACCESS EXCLUSIVE MODE"))
            started = time.monotonic()
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                log.append(rows(uuid.uuid4().hex, model=log.model_name))
            assert time.monotonic() - started < 10
        log.append(rows(uuid.uuid4().hex, model=log.model_name))  # the lock is gone: it works again
    finally:
        log.close()
        locker.dispose()


def test_the_spool_can_live_outside_the_servers_home(tmp_path):
    """MLOPS_PREDICTION_SPOOL (the chart: the shared volume) holds the open segments."""
    from pipelines.prediction_log import open_log
    from pipelines.settings import Settings

    env = {"MLOPS_HOME": str(tmp_path / "home"), "MLOPS_PREDICTION_SPOOL": str(tmp_path / "shared" / "spool")}
    log = open_log(Settings.from_env(env), "m")
    log.append(rows("a"))
    assert len(list((tmp_path / "shared" / "spool" / "m").glob("*.open.jsonl"))) == 1
    assert not (tmp_path / "home" / "serving" / "spool").exists()
    log.close()


# -- reads proportional to the window -------------------------------------------------------------
def test_event_clock_reads_parts_of_versions_with_other_features(tmp_path):
    """The event clock reads parts through pyarrow's statistics; parts of a version with other input
    columns keep theirs (the union of every part's schema)."""
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    old, new = _dated("old", "2013-04-10T08:00:00Z"), _dated("new", "2013-04-11T08:00:00Z")
    for row in new:
        row["inputs"] = {"temp": 50.0, "wind": 7.0}  # the new version takes one more feature
    log.append(old)
    log.flush()
    log.append(new)
    log.close()
    april = log.read("2013-04-01", "2013-05-01", clock="event_time").set_index("request_id")
    assert sorted(set(april.index)) == ["new", "old"]
    assert april.loc["new", "input.wind"].tolist() == [7.0, 7.0]
    assert april.loc["old", "input.wind"].isna().all()
    assert log.read("2013-06-01", "2013-07-01", clock="event_time").empty


@pytest.mark.parametrize("store", ["parquet", "postgresql"])
def test_feedback_and_rollout_reads_stop_at_the_window(tmp_path, store, request):
    log = (
        ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
        if store == "parquet"
        else request.getfixturevalue("pg_log")
    )
    model = getattr(log, "model_name", "m")
    ours, theirs = uuid.uuid4().hex, uuid.uuid4().hex
    batch = rows(ours, model=model) + rows(theirs, model=model)
    for row in batch:
        row["rollout_id"] = "r-ours" if row["request_id"] == ours else "r-theirs"
    log.append(batch)
    old = (time.time() - 3 * 86400) * 1000  # a label from three days ago: before this window
    now = time.time() * 1000
    log.append_feedback([{"request_id": theirs, "row": 0, "label": 1, "ts": old}])
    log.append_feedback([{"request_id": ours, "row": 0, "label": 0, "ts": now}])
    since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)
    recent = set(log.read_feedback(since=since)["request_id"])  # (the table is shared on PostgreSQL)
    assert ours in recent and theirs not in recent
    assert {ours, theirs} <= set(log.read_feedback()["request_id"])
    assert set(log.read(start=since, rollout_id="r-ours")["request_id"]) == {ours}
    if store == "parquet":
        log.close()


def test_the_event_clock_window_uses_an_index_on_postgresql(pg_log):
    """Regression: the filter on coalesce(event_time, ts) had no index: every monitoring read
    scanned the whole table."""
    import sqlalchemy as sa

    with pg_log.engine.begin() as conn:
        indexes = {r[0]: r[1] for r in conn.execute(sa.text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'mlops_predictions'"))}  # fmt: skip
        assert "COALESCE(event_time, ts)" in indexes["ix_mlops_predictions_model_when"]
        conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a small table: make the plan show the path
        # The model_name index also fits a test table's few rows (other tests fill the same table, and
        # the statistics decided): hide it in this transaction, which rolls back, to ask whether the
        # window itself has an index. lock_timeout: another test's open transaction fails this fast.
        conn.execute(sa.text("SET LOCAL lock_timeout = '10s'"))
        conn.execute(sa.text("DROP INDEX IF EXISTS ix_mlops_predictions_model_name"))
        plan = "\n".join(r[0] for r in conn.execute(sa.text(
            "EXPLAIN SELECT * FROM mlops_predictions WHERE model_name = :m"
            " AND coalesce(event_time, ts) >= :a AND coalesce(event_time, ts) < :b"),
            {"m": pg_log.model_name, "a": "2013-04-01", "b": "2013-05-01"}))  # fmt: skip
        conn.rollback()
    assert "ix_mlops_predictions_model_when" in plan, plan


def test_finished_days_of_feedback_are_merged_into_one_file(tmp_path):
    """Regression: one Parquet file per /feedback call, for ever; every read opened them all."""
    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool", writer=False)
    day = pd.Timestamp("2026-11-02T10:00:00Z").timestamp() * 1000
    for i in range(30):  # thirty calls on one day; the same label corrected once
        log.append_feedback([{"request_id": f"r{i}", "row": 0, "label": i % 2, "ts": day + i}])
    log.append_feedback([{"request_id": "r3", "row": 0, "label": 0, "ts": day + 100}])
    today = time.time() * 1000
    log.append_feedback([{"request_id": "t", "row": 0, "label": 1, "ts": today}])
    before = log.read_feedback()
    assert log.compact_feedback() == 1  # today's stay as they are: more may come
    folder = tmp_path / "store" / "feedback"
    assert [p.name for p in (folder / "date=2026-11-02").iterdir()] == ["day.parquet"]
    after = log.read_feedback()
    assert len(after) == 31 and len(before) == 32
    labels = dict(zip(after["request_id"], after["label"], strict=True))
    assert labels["r3"] == 0 and labels["r4"] == 0 and labels["r5"] == 1 and labels["t"] == 1
    assert log.compact_feedback() == 0  # idempotent


def test_a_segment_sealed_between_listing_and_reading_is_still_read(tmp_path, monkeypatch):
    """Regression (review): a segment renamed from .open.jsonl to .jsonl after the reader listed it
    was skipped as if compacted, and its rows were missing from that read."""
    import pipelines.prediction_log.parquet as module

    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    log.append(rows("sealed-meanwhile"))
    real = module._segment_frame
    sealed_once = []

    def seal_first(path):
        if path.name.endswith(".open.jsonl") and not sealed_once:
            sealed_once.append(log._seal())  # the writer seals it right now, before it is compacted
        return real(path)

    monkeypatch.setattr(module, "_segment_frame", seal_first)
    assert log.read()["request_id"].tolist() == ["sealed-meanwhile"] * 2
    assert sealed_once and sealed_once[0].exists()
    monkeypatch.setattr(module, "_segment_frame", real)
    log.close()


def test_a_feedback_part_merged_while_it_is_read_is_found_in_the_days_file(tmp_path, monkeypatch):
    """Regression (review): a reader that met a part compact_feedback had just removed failed."""
    import pipelines.prediction_log.parquet as module

    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool", writer=False)
    day = pd.Timestamp("2026-11-02T10:00:00Z").timestamp() * 1000
    for i in range(3):
        log.append_feedback([{"request_id": f"r{i}", "row": 0, "label": 1, "ts": day + i}])
    real, compacted = module.pd.read_parquet, []

    def compact_first(fh, *args, **kwargs):
        if not compacted:
            compacted.append("started")
            compacted.append(log.compact_feedback())  # another writer merges the day meanwhile
        return real(fh, *args, **kwargs)

    monkeypatch.setattr(module.pd, "read_parquet", compact_first)
    assert sorted(log.read_feedback()["request_id"]) == ["r0", "r1", "r2"]
    assert compacted == ["started", 1]


def test_strings_that_look_like_dates_stay_strings_in_every_part(tmp_path):
    """Review 3, H1: pyarrow's JSON reader turned a routing key or a category such as "2013-01-01"
    into a timestamp column in that segment's part; parts then disagreed on the column's type and
    every event-clock read of the log (drift, rollouts) failed from then on."""
    import pyarrow.parquet as pq

    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    plain, datelike = rows("plain", 1), rows("datelike", 1)
    plain[0]["routing_key"] = "customer-17"
    datelike[0]["routing_key"] = "2013-01-01"
    datelike[0]["inputs"]["carrier"] = "2013-01-01 00:00:00"
    log.append(plain)
    log.flush()
    log.append(datelike)
    log.close()
    for part in (tmp_path / "store" / "predictions").glob("date=*/*.parquet"):
        schema = pq.read_schema(part)
        assert str(schema.field("routing_key").type) == "string", (part.name, schema)
        assert str(schema.field("input.carrier").type) == "string", (part.name, schema)
    for clock in ("ts", "event_time"):
        frame = log.read(pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h"), None, clock=clock)
        got = frame.set_index("request_id")
        assert got.loc["datelike", "routing_key"] == "2013-01-01", clock
        assert got.loc["datelike", "input.carrier"] == "2013-01-01 00:00:00", clock
        assert got.loc["plain", "input.carrier"] == "UA", clock


def test_a_part_written_with_a_date_typed_column_is_still_read(tmp_path):
    """A log that an older server wrote, with one part's string column stored as a timestamp, is
    read on both clocks: the column comes back as text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    log = ParquetPredictionLog(str(tmp_path / "store"), tmp_path / "spool")
    log.append(rows("plain", 1) + rows("old", 1))
    log.close()
    [part] = (tmp_path / "store" / "predictions").glob("date=*/*.parquet")
    table = pq.read_table(part)
    old = table.filter(pa.compute.equal(table["request_id"], "old"))
    plain = table.filter(pa.compute.equal(table["request_id"], "plain"))
    stamp = pa.array([pd.Timestamp("2013-01-01")], type=pa.timestamp("ms"))
    i = old.schema.get_field_index("input.carrier")
    pq.write_table(old.set_column(i, pa.field("input.carrier", pa.timestamp("ms")), stamp), part)
    pq.write_table(plain, part.with_name("other.parquet"))
    for clock in ("ts", "event_time"):
        got = log.read(pd.Timestamp.now(tz="UTC") - pd.Timedelta("1h"), None, clock=clock)
        got = got.set_index("request_id")
        assert got.loc["plain", "input.carrier"] == "UA", clock
        assert got.loc["old", "input.carrier"].startswith("2013-01-01"), clock
