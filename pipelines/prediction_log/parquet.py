"""The Parquet store (embedded default): a durable JSON-lines spool, compacted into Parquet parts."""

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

import orjson
import pandas as pd

from pipelines import storage
from pipelines.prediction_log.base import CLOCKS, COLUMNS, FEEDBACK_COLUMNS, FEEDBACK_DAY_FILE, _stamp
from pipelines.prediction_log.reading import (
    _between,
    _dates_as_text,
    _read_parts,
    _read_parts_on_event_time,
)
from pipelines.prediction_log.segments import _segment_frame

log = logging.getLogger(__name__)


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
            finally:
                _release_arrow_memory()

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


def _release_arrow_memory() -> None:
    """Give the memory a compaction's Arrow buffers held back to the OS.

    Arrow's allocator (mimalloc in the wheels) keeps freed pages for reuse, so without this the
    server's RSS kept each compaction's high-water mark: steps of 10-15 MB at random compactions
    of a long load, indistinguishable from a leak on a dashboard.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
