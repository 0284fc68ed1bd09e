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

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


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
def pg_log():
    name = f"test-{uuid.uuid4().hex[:8]}"
    try:
        log = SqlPredictionLog(PG_URL, name)
    except Exception as exc:  # pragma: no cover - the service runs on every machine this targets
        pytest.fail(f"PostgreSQL at {PG_URL} is not reachable: {exc}")
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
