"""The prediction log: one row per scored row, durable, joinable with feedback labels.

Two stores behind one interface:

- **Parquet** (embedded default): the server appends JSON lines to a local
  spool segment and returns only after the write reached the operating system
  (``fsync`` too when asked), so an acknowledged prediction survives a crash or
  restart of the server. Sealed segments are compacted into Parquet parts
  under ``{artifact_root}/predictions/{model}/date=YYYY-MM-DD/``, written
  atomically and named after the segment, so a crash between compaction and
  clean-up rewrites the same part instead of duplicating rows. Readers see the
  parts and any segment not yet compacted.
- **PostgreSQL** (production): rows are inserted in the request's transaction,
  committed before the answer leaves; feedback is an upsert.

Feature values are stored as ``input.<feature>`` columns so that drift checks
can compare them with the training reference column by column.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from pipelines import storage
from pipelines.settings import Settings

log = logging.getLogger(__name__)

INPUT_PREFIX = "input."
COLUMNS = [
    "request_id",
    "row",
    "ts",
    "event_time",
    "model_name",
    "model_version",
    "route",
    "routing_key",
    "rollout_id",
    "probability",
    "prediction",
    "latency_ms",
]
FEEDBACK_COLUMNS = ["request_id", "row", "label", "ts"]
FEEDBACK_DAY_FILE = "day.parquet"  # a finished day's feedback, merged (compact_feedback)


def _ms_to_utc(values: pd.Series) -> pd.Series:
    """Epoch milliseconds (missing or out-of-range: NaT) as UTC times, without float rounding traps.

    ``pd.to_datetime(unit="ms")`` on a float column raised FloatingPointError inside a long test
    session (an overflow check under ``np.errstate(over="raise")``); integer nanoseconds do not.
    """
    ms = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    valid = np.isfinite(ms) & (np.abs(ms) < 9.2e12)  # inside datetime64[ns]: +-2**63 ns is 9.22e12 ms
    ns = np.zeros(len(ms), dtype="int64")
    ns[valid] = np.round(ms[valid] * 1_000_000).astype("int64")
    out = pd.Series(pd.to_datetime(ns, utc=True), index=values.index)
    return out.where(valid)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Log rows (with an ``inputs`` dict each) as a flat frame with ``input.*`` columns."""
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    base = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    base["ts"] = _ms_to_utc(base["ts"])
    base["event_time"] = _ms_to_utc(base["event_time"])
    base["row"] = base["row"].astype("int64")
    base["model_version"] = base["model_version"].astype(str)
    inputs = pd.DataFrame([r.get("inputs") or {} for r in rows]).add_prefix(INPUT_PREFIX)
    return pd.concat([base, inputs], axis=1)


def _segment_frame(path: Path) -> pd.DataFrame:
    """A spool segment as a flat frame. pyarrow's JSON reader parses off the GIL (5x faster than
    Python here), so compaction does not stall the server's event loop; a torn last line (crash
    mid-write) makes it fail, and the line-by-line reader, which skips it, takes over."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        table = pj.read_json(path)
        if _temporal_fields(table.schema):  # a client's "2013-01-01" is text, not a date: re-read as such
            options = pj.ParseOptions(explicit_schema=_text_for_dates(table.schema))
            table = pj.read_json(path, parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return _frame(_read_lines(path))
    if table.num_rows == 0:
        return pd.DataFrame(columns=COLUMNS)
    frame = table.flatten().to_pandas()
    frame = frame.rename(
        columns=lambda c: INPUT_PREFIX + c.removeprefix("inputs.") if c.startswith("inputs.") else c
    )
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["ts"] = _ms_to_utc(frame["ts"])
    frame["event_time"] = _ms_to_utc(frame["event_time"])
    frame["row"] = frame["row"].astype("int64")
    frame["model_version"] = frame["model_version"].astype(str)
    inputs = [c for c in frame.columns if c.startswith(INPUT_PREFIX)]
    return frame[[*COLUMNS, *inputs]]


def _temporal_fields(schema: Any) -> list[str]:
    """Names of the fields, nested ones too, that pyarrow typed as dates or times.

    Nothing a segment holds is one: ``ts`` and ``event_time`` are epoch milliseconds, and every
    string (a routing key, a category) is the client's text. pyarrow's JSON reader has no switch
    for its timestamp inference, so a segment where it fired is read again with those fields as
    strings; otherwise one "2013-01-01" made its part's column a timestamp and parts disagreed.
    """
    import pyarrow as pa

    found = []
    for field in schema:
        if pa.types.is_struct(field.type):
            found += [f"{field.name}.{name}" for name in _temporal_fields(pa.schema(list(field.type)))]
        elif pa.types.is_temporal(field.type):
            found.append(field.name)
    return found


def _text_for_dates(schema: Any, keep: tuple[str, ...] = ()) -> Any:
    """``schema`` with every date or time field (nested ones too), except those in ``keep``, typed
    as a string."""
    import pyarrow as pa

    def text(field: Any) -> Any:
        if pa.types.is_struct(field.type):
            return field.with_type(pa.struct([text(child) for child in field.type]))
        return field.with_type(pa.string()) if pa.types.is_temporal(field.type) else field

    return pa.schema([field if field.name in keep else text(field) for field in schema])


def _dates_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A part's columns other than the two clocks as text where a date type got in (parts written
    before segments were read with the dates as strings): they concatenate with the other parts."""
    for column in frame.columns:
        if column not in CLOCKS and pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype(str).where(frame[column].notna(), None)
    return frame


# Which clock a read's window is on: when the server answered (``ts``), or when the scored event
# happened (``event_time``, sent by the client, e.g. a replay of history; ``ts`` where absent).
CLOCKS = ("ts", "event_time")


def _clock(frame: pd.DataFrame, clock: str) -> pd.Series:
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose one of {CLOCKS}")
    if clock == "event_time" and "event_time" in frame:
        return pd.to_datetime(frame["event_time"], utc=True).fillna(frame["ts"])
    return frame["ts"]


def _between(
    frame: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp | None, clock: str = "ts"
) -> pd.DataFrame:
    if start is None and end is None:
        return frame
    times = _clock(frame, clock)
    keep = pd.Series(True, index=frame.index)
    if start is not None:
        keep &= times >= start
    if end is not None:
        keep &= times < end
    return frame[keep]


def _stamp(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def with_feedback(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Predictions with a ``label`` column (NaN where no feedback arrived yet)."""
    if feedback.empty:
        return predictions.assign(label=float("nan"))
    labels = feedback.sort_values("ts").drop_duplicates(["request_id", "row"], keep="last")
    merged = predictions.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"], how="left")
    return merged


@dataclass
class _Segment:
    path: Path
    fd: int
    opened: float
    rows: int = 0
    size: int = 0  # bytes of whole lines: where a failed write is cut back to


class ParquetPredictionLog:
    """Spooled JSON lines, compacted into Parquet parts in the artifact store."""

    def __init__(
        self,
        root: str,
        spool_dir: str | Path,
        *,
        fsync: bool = False,
        segment_rows: int = 10_000,
        segment_seconds: float = 30.0,
        writer: bool = True,
    ):
        self.root = root
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment_rows, self.segment_seconds = segment_rows, segment_seconds
        self._lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._segment: _Segment | None = None
        self._stop = threading.Event()
        self._thread = None
        # One compaction at a time (they share _compact_lock anyway): a burst of sealed segments
        # queues here instead of starting a thread each.
        self._compactor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predlog-compact")
        if writer:  # a reader never compacts: that is the writers' job, and two would race
            self.recover()
            self._thread = threading.Thread(target=self._rotate_when_old, name="predlog", daemon=True)
            self._thread.start()

    # -- writing -------------------------------------------------------------------------------
    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write rows; on return they survive a crash of this process (and of the OS with fsync)."""
        if not rows:
            return
        data = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in rows)
        sealed = None
        with self._lock:
            segment = self._segment or self._open_segment()
            try:
                written = 0
                while written < len(data):
                    written += os.write(segment.fd, data[written:])
                if self.fsync:
                    os.fsync(segment.fd)
            except OSError:
                self._cut_back(segment)
                raise
            segment.rows += len(rows)
            segment.size += len(data)
            if segment.rows >= self.segment_rows:
                sealed = self._seal()
        if sealed:
            self._compact_async(sealed)

    def append_feedback(self, items: Iterable[dict[str, Any]]) -> int:
        """Store ground-truth labels by (request id, row); the part is written atomically."""
        frame = pd.DataFrame(list(items), columns=FEEDBACK_COLUMNS)
        if frame.empty:
            return 0
        frame["ts"] = pd.to_datetime(frame["ts"], unit="ms", utc=True)
        day = frame["ts"].iloc[0].strftime("%Y-%m-%d")
        storage.write_parquet(
            storage.join(self.root, "feedback", f"date={day}", f"{uuid.uuid4().hex}.parquet"), frame
        )
        return len(frame)

    def _cut_back(self, segment: _Segment) -> None:
        """After a failed write (caller holds the lock): drop the torn tail, then seal the segment,
        so the next append starts a fresh line in a fresh file. If even the cut fails, the torn
        line stays the segment's last, which readers skip (that write was never acknowledged)."""
        try:
            os.ftruncate(segment.fd, segment.size)
        except OSError:
            log.exception("could not cut a failed write out of %s", segment.path)
        try:
            sealed = self._seal()
        except OSError:
            log.exception("could not seal %s after a failed write", segment.path)
            self._segment = None
            return
        if sealed and segment.rows:
            self._compactor.submit(self._compact, sealed)

    def _open_segment(self) -> _Segment:
        """A new segment, locked before it is visible under its ``.open.jsonl`` name: another
        worker's recovery takes over only unlocked segments, and must never see this one free."""
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"
        hidden = self.spool / f".{name}.new"  # not matched by the readers' or recovery's "*.jsonl"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # marks the segment as owned by a live writer
        path = self.spool / f"{name}.open.jsonl"
        os.rename(hidden, path)  # the lock is on the file, so it moves with it
        self._segment = _Segment(path, fd, time.monotonic())
        return self._segment

    def _seal(self) -> Path | None:
        """Close the current segment (caller holds the lock); return its sealed path."""
        segment, self._segment = self._segment, None
        if segment is None:
            return None
        sealed = segment.path.with_name(segment.path.name.replace(".open.jsonl", ".jsonl"))
        os.rename(segment.path, sealed)
        os.close(segment.fd)
        return sealed

    def compact_feedback(self, before: Any = None) -> int:
        """Merge each finished day's feedback parts (one per ``/feedback`` call) into one file, the
        last label of each (request, row) kept; returns the days merged. Safe with readers and other
        writers doing the same: a reader meanwhile sees a label twice at worst (with_feedback keeps
        the newest), and a merge only ever rewrites the same rows."""
        import fsspec

        before = (_stamp(before) or pd.Timestamp.now(tz="UTC")).strftime("%Y-%m-%d")
        root = storage.join(self.root, "feedback")
        fs, path = fsspec.core.url_to_fs(root, **storage.options(root))
        if not fs.exists(path):
            return 0
        merged = 0
        for day_dir in sorted(fs.ls(path, detail=False)):
            day = day_dir.rstrip("/").rsplit("date=", 1)[-1]
            parts = sorted(fs.glob(f"{day_dir}/*.parquet"))
            target = f"{day_dir.rstrip('/')}/{FEEDBACK_DAY_FILE}"
            if day >= before or [p for p in parts if p != target] == []:
                continue
            frames = []
            for part in parts:
                with fs.open(part, "rb") as fh:
                    frames.append(_dates_as_text(pd.read_parquet(fh)))
            frame = pd.concat(frames, ignore_index=True).sort_values("ts", kind="stable")
            frame = frame.drop_duplicates(["request_id", "row"], keep="last").reset_index(drop=True)
            storage.write_parquet(storage.join(root, f"date={day}", FEEDBACK_DAY_FILE), frame)
            for part in parts:
                if part != target:
                    fs.rm(part)
            merged += 1
        return merged

    def _compact_feedback_logged(self) -> None:
        try:
            self.compact_feedback()
        except Exception:
            log.exception("compacting feedback failed; trying again in an hour")

    def _rotate_when_old(self) -> None:
        tick = min(1.0, max(self.segment_seconds / 2, 0.05))
        next_feedback_compaction = 0.0
        while not self._stop.wait(tick):
            if time.monotonic() >= next_feedback_compaction:  # finished days' labels, hourly
                next_feedback_compaction = time.monotonic() + 3600
                # on the compaction thread: listing an object store must not hold up rotation
                self._compactor.submit(self._compact_feedback_logged)
            try:
                sealed = None
                with self._lock:
                    seg = self._segment
                    if seg and seg.rows and time.monotonic() - seg.opened >= self.segment_seconds:
                        sealed = self._seal()
                if sealed:
                    self._compact(sealed)
            except Exception:  # one bad tick must not end rotation for the process's lifetime
                log.exception("rotating the prediction log failed; trying again")

    def _compact_async(self, sealed: Path) -> None:
        self._compactor.submit(self._compact, sealed)

    def _compact(self, sealed: Path) -> None:
        """Sealed segment -> Parquet part(s) per day, then remove the segment."""
        with self._compact_lock:
            if not sealed.exists():
                return
            try:
                frame = _segment_frame(sealed)
                # floor, not strftime: formatting every row's date held the GIL ~0.5 s per 50k rows
                for day_start, part in frame.groupby(frame["ts"].dt.floor("D")):
                    day = day_start.strftime("%Y-%m-%d")
                    name = f"{sealed.name.removesuffix('.jsonl')}.parquet"
                    storage.write_parquet(
                        storage.join(self.root, "predictions", f"date={day}", name),
                        part.reset_index(drop=True),
                    )
                sealed.unlink()
            except Exception:  # the segment stays in the spool; readers still see it, recovery retries
                log.exception("could not compact prediction log segment %s", sealed)

    def recover(self) -> None:
        """Compact segments left by a stopped or crashed writer (their lock is free)."""
        for path in self.spool.glob(".*.new"):  # a writer died between creating and naming it
            self._remove_if_free(path)  # nothing is written before the rename: it holds no row
        for path in sorted(self.spool.glob("*.jsonl")):
            if path.name.endswith(".open.jsonl"):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a live writer owns it
                    os.close(fd)
                    continue
                sealed = path.with_name(path.name.replace(".open.jsonl", ".jsonl"))
                os.rename(path, sealed)
                os.close(fd)
                path = sealed
            self._compact(path)

    @staticmethod
    def _remove_if_free(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except BlockingIOError:  # a live writer is naming it right now
            pass
        finally:
            os.close(fd)

    def ping(self) -> None:
        """Raise unless a row could be written now: the spool takes a small file, synced."""
        probe = self.spool / f".ping-{uuid.uuid4().hex[:8]}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"ping\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            probe.unlink(missing_ok=True)

    def flush(self) -> None:
        """Seal and compact now (shutdown, tests)."""
        with self._lock:
            sealed = self._seal()
        if sealed:
            self._compact(sealed)

    def close(self) -> None:
        self._stop.set()
        if self._segment is not None:
            self.flush()
        self._compactor.shutdown(wait=True)

    # -- reading -------------------------------------------------------------------------------
    def read(
        self, start: Any = None, end: Any = None, clock: str = "ts", rollout_id: str | None = None
    ) -> pd.DataFrame:
        """Predictions (parts and pending segments) whose ``clock`` time is in [start, end).

        On ``ts`` the parts are partitioned by day: only the window's days are opened. On
        ``event_time`` any day may hold the window's events (a replay of history), so every part's
        footer is read, but only row groups whose event-time statistics meet the window are."""
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; choose one of {CLOCKS}")
        start, end = _stamp(start), _stamp(end)
        # Segments before parts: a segment compacted in between is then found as a part; the
        # other order could miss it (part listed before it existed, segment gone when globbed).
        frames = []
        for path in sorted(self.spool.glob("*.jsonl")):
            try:
                frames.append(_segment_frame(path))
            except OSError:
                # sealed meanwhile (renamed, not yet compacted): read it under its sealed name;
                # compacted meanwhile: its part is listed below
                sealed = path.with_name(path.name.replace(".open.jsonl", ".jsonl"))
                if sealed != path:
                    with contextlib.suppress(OSError):
                        frames.append(_segment_frame(sealed))
        parts = storage.join(self.root, "predictions")
        if clock == "ts":  # parts are partitioned by ``ts``: only that clock can skip days
            frames.append(_read_parts(parts, start, end))
        else:
            frames.append(_read_parts_on_event_time(parts, start, end))
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.drop_duplicates(["request_id", "row", "route"], keep="first")
        if rollout_id is not None:
            frame = frame[frame["rollout_id"] == rollout_id]
        return _between(frame, start, end, clock).sort_values("ts", kind="stable").reset_index(drop=True)

    def read_feedback(self, since: Any = None) -> pd.DataFrame:
        """Labels that arrived at or after ``since`` (days before it are not opened)."""
        since = _stamp(since)
        frame = _read_parts(storage.join(self.root, "feedback"), since, None)
        if since is not None and not frame.empty:
            frame = frame[pd.to_datetime(frame["ts"], utc=True) >= since]
        return frame if not frame.empty else pd.DataFrame(columns=FEEDBACK_COLUMNS)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """A segment's rows. Only its last line may be torn (a write that never returned, so was never
    acknowledged): it is skipped. A bad line before the last means damage, and is an error."""
    rows, torn = [], None
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if torn is not None:
                raise ValueError(f"prediction log segment {path}: line {torn} of {number} or more is damaged")
            try:
                rows.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                torn = number
    if torn is not None:
        log.warning("skipping a torn last line in %s", path)
    return rows


def _read_parts(root: str, start: pd.Timestamp | None, end: pd.Timestamp | None) -> pd.DataFrame:
    import fsspec

    fs, path = fsspec.core.url_to_fs(root, **storage.options(root))
    if not fs.exists(path):
        return pd.DataFrame()
    frames = []
    for day_dir in sorted(fs.ls(path, detail=False)):
        day = day_dir.rstrip("/").rsplit("date=", 1)[-1]
        if start is not None and day < start.strftime("%Y-%m-%d"):
            continue
        if end is not None and day > end.strftime("%Y-%m-%d"):
            continue
        frames.extend(_read_day(fs, day_dir))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _read_day(fs: Any, day_dir: str, attempts: int = 3) -> list[pd.DataFrame]:
    """A day folder's parts. A part that vanished while it was read was merged into the day's file
    (compact_feedback writes that first, then removes the parts): list the folder again."""
    for attempt in range(attempts):
        try:
            frames = []
            for part in sorted(fs.glob(f"{day_dir}/*.parquet")):
                with fs.open(part, "rb") as fh:
                    frames.append(_dates_as_text(pd.read_parquet(fh)))
            return frames
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    return []


def _read_parts_on_event_time(
    root: str, start: pd.Timestamp | None, end: pd.Timestamp | None
) -> pd.DataFrame:
    """Parts whose rows' event time (``ts`` where absent) is in [start, end), with pyarrow's
    row-group statistics deciding what is decoded: the footers are read, the data only where the
    window can be."""
    import fsspec
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    if start is None and end is None:
        return _read_parts(root, None, None)
    fs, path = fsspec.core.url_to_fs(root, **storage.options(root))
    files = sorted(fs.glob(f"{path.rstrip('/')}/date=*/*.parquet"))
    if not files:
        return pd.DataFrame()
    # versions with other features wrote other input columns: the union of every part's schema
    # (a column a part stored as a date, from before segments kept dates as text, is read as text)
    schemas = [_text_for_dates(pq.read_schema(f, filesystem=fs), keep=CLOCKS) for f in files]
    schema = pa.unify_schemas(schemas, promote_options="permissive")
    dataset = ds.dataset(files, schema=schema, filesystem=fs, format="parquet")
    event, ts = ds.field("event_time"), ds.field("ts")

    def inside(column: ds.Expression) -> ds.Expression:
        keep = column.is_valid()
        if start is not None:
            keep &= column >= start.to_pydatetime()
        if end is not None:
            keep &= column < end.to_pydatetime()
        return keep

    if "event_time" not in dataset.schema.names:
        return dataset.to_table(filter=inside(ts)).to_pandas()
    return dataset.to_table(filter=inside(event) | (~event.is_valid() & inside(ts))).to_pandas()


def _event_time(ms: float | None) -> pd.Timestamp | None:
    return None if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC")


# Longest a statement of the SQL log may run before PostgreSQL cancels it: an append (a request
# waits on it) fails in seconds; a window's read, which scans more, gets READ_TIMEOUT_SECONDS.
STATEMENT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 600


class SqlPredictionLog:
    """PostgreSQL tables ``mlops_predictions`` and ``mlops_feedback``; a commit is the acknowledgement."""

    def __init__(self, url: str, model_name: str):
        import sqlalchemy as sa

        self.model_name = model_name
        from pipelines.storage import sql_engine

        # A request waits on this log before it is answered: a hung database is a 503 in seconds.
        self.engine = sql_engine(
            url, statement_timeout_seconds=STATEMENT_TIMEOUT_SECONDS, pool_pre_ping=True, pool_size=4
        )
        meta = sa.MetaData()
        self.predictions = sa.Table(
            "mlops_predictions",
            meta,
            sa.Column("request_id", sa.Text, primary_key=True),
            sa.Column("row", sa.Integer, primary_key=True),
            sa.Column("route", sa.Text, primary_key=True),
            sa.Column("ts", sa.DateTime(timezone=True), nullable=False, index=True),
            sa.Column("event_time", sa.DateTime(timezone=True), index=True),
            sa.Column("model_name", sa.Text, nullable=False, index=True),
            sa.Column("model_version", sa.Text, nullable=False),
            sa.Column("routing_key", sa.Text),
            sa.Column("rollout_id", sa.Text),
            sa.Column("probability", sa.Float),
            sa.Column("prediction", sa.Integer),
            sa.Column("latency_ms", sa.Float),
            sa.Column("inputs", sa.JSON),
        )
        self.feedback = sa.Table(
            "mlops_feedback",
            meta,
            sa.Column("request_id", sa.Text, primary_key=True),
            sa.Column("row", sa.Integer, primary_key=True),
            sa.Column("label", sa.Integer, nullable=False),
            sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        )
        self.feedback_ts = sa.Index("ix_mlops_feedback_ts", self.feedback.c.ts)
        # The event clock's window, per model: the expression the reads filter on, so PostgreSQL
        # reads the window's rows instead of the whole table.
        table = self.predictions.c
        self.when_index = sa.Index(
            "ix_mlops_predictions_model_when", table.model_name, sa.func.coalesce(table.event_time, table.ts)
        )
        self.rollout_index = sa.Index("ix_mlops_predictions_rollout", table.rollout_id)
        meta.create_all(self.engine, checkfirst=True)
        with self.engine.begin() as conn:  # tables made before event_time existed
            conn.execute(
                sa.text("ALTER TABLE mlops_predictions ADD COLUMN IF NOT EXISTS event_time timestamptz")
            )
        for index in (self.feedback_ts, self.when_index, self.rollout_index):  # tables of older releases
            index.create(self.engine, checkfirst=True)

    def append(self, rows: list[dict[str, Any]]) -> None:
        from sqlalchemy.dialects.postgresql import insert

        if not rows:
            return
        values = [
            {
                **{c: r.get(c) for c in COLUMNS},
                "ts": pd.Timestamp(r["ts"], unit="ms", tz="UTC"),
                "event_time": _event_time(r.get("event_time")),
                "inputs": r["inputs"],
            }
            for r in rows
        ]
        with self.engine.begin() as conn:
            conn.execute(insert(self.predictions).on_conflict_do_nothing(), values)

    def append_feedback(self, items: Iterable[dict[str, Any]]) -> int:
        from sqlalchemy.dialects.postgresql import insert

        values = [{**i, "ts": pd.Timestamp(i["ts"], unit="ms", tz="UTC")} for i in items]
        if not values:
            return 0
        stmt = insert(self.feedback)
        stmt = stmt.on_conflict_do_update(
            index_elements=["request_id", "row"], set_={"label": stmt.excluded.label, "ts": stmt.excluded.ts}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, values)
        return len(values)

    def read(
        self, start: Any = None, end: Any = None, clock: str = "ts", rollout_id: str | None = None
    ) -> pd.DataFrame:
        import sqlalchemy as sa

        start, end = _stamp(start), _stamp(end)
        table = self.predictions.c
        if clock not in CLOCKS:
            raise ValueError(f"unknown clock {clock!r}; choose one of {CLOCKS}")
        when = table.ts if clock == "ts" else sa.func.coalesce(table.event_time, table.ts)
        query = sa.select(self.predictions).where(table.model_name == self.model_name)
        if rollout_id is not None:
            query = query.where(table.rollout_id == rollout_id)
        if start is not None:
            query = query.where(when >= start.to_pydatetime())
        if end is not None:
            query = query.where(when < end.to_pydatetime())
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"SET LOCAL statement_timeout = {READ_TIMEOUT_SECONDS * 1000}"))
            # the key breaks ties: a request's rows share one ts, and an upsert moves rows on disk
            ordered = query.order_by(table.ts, table.request_id, table.row)
            rows = [dict(r._mapping) for r in conn.execute(ordered)]
        if not rows:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.DataFrame(rows)
        inputs = pd.DataFrame(list(frame.pop("inputs"))).add_prefix(INPUT_PREFIX)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
        return pd.concat([frame[COLUMNS], inputs], axis=1)

    def ping(self) -> None:
        """Raise unless the database answers now."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def read_feedback(self, since: Any = None) -> pd.DataFrame:
        """Labels that arrived at or after ``since`` (a label comes after its prediction: pass the
        earliest prediction's time, and the read stays proportional to the window)."""
        query = self.feedback.select()
        if (since := _stamp(since)) is not None:
            query = query.where(self.feedback.c.ts >= since.to_pydatetime())
        with self.engine.connect() as conn:
            frame = pd.read_sql(query, conn)
        return frame if not frame.empty else pd.DataFrame(columns=FEEDBACK_COLUMNS)

    def flush(self) -> None:
        """Nothing buffered: every append is committed."""

    def close(self) -> None:
        self.engine.dispose()


def open_log(settings: Settings, model_name: str, *, writer: bool = True, **options: Any):
    """The prediction log of ``model_name`` in the profile's store (``writer=False`` to only read)."""
    url = settings.prediction_log_url
    if url and url.split(":", 1)[0].startswith("postgresql"):
        return SqlPredictionLog(url, model_name)
    root = url or storage.join(settings.artifact_root, "prediction_log")
    spool = Path(settings.prediction_spool or settings.home / "serving" / "spool")
    return ParquetPredictionLog(
        storage.join(root, storage.safe_segment(model_name)),
        spool / storage.safe_segment(model_name),
        writer=writer,
        **options,
    )
