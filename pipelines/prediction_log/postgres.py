"""The PostgreSQL store (production): a commit is the acknowledgement; feedback is an upsert."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd

from pipelines.prediction_log.base import CLOCKS, COLUMNS, FEEDBACK_COLUMNS, INPUT_PREFIX, _stamp


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
