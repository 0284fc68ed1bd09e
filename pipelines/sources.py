"""Data sources behind one interface: ``read(start, end) -> DataFrame``.

A source returns the raw rows whose time column falls in ``[start, end)``,
with the configured lookup tables joined on. Kinds:

- ``file``: CSV or Parquet at a local path, a ``package://`` path (data that
  ships inside a Python package, like the bundled flights) or any fsspec URL;
- ``sql``: a table read through SQLAlchemy, the time filter pushed down.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import fsspec
import pandas as pd
import sqlalchemy as sa

from pipelines import config as cfg
from pipelines import privacy, storage
from pipelines.errors import DataError, PipelineError
from pipelines.storage import resolve, sql_engine


class DataSource(Protocol):
    def read(self, start: datetime, end: datetime) -> pd.DataFrame: ...


def _format(uri: str, declared: str | None) -> str:
    if declared:
        return declared
    name = uri.lower()
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz")):
        return "csv"
    raise DataError(f"cannot tell the format of {uri}: set 'format: csv' or 'format: parquet'")


def read_table(uri: str, fmt: str | None = None) -> pd.DataFrame:
    """Read a whole CSV or Parquet file from a path or fsspec URL."""
    path = resolve(uri)
    kind = _format(uri, fmt)
    try:
        fs, raw_path = fsspec.core.url_to_fs(path, **storage.options(path))
        if fs.size(raw_path) == 0:
            raise DataError(f"source file {uri} is empty (0 bytes)")
        with fsspec.open(path, "rb", compression="infer", **storage.options(path)) as fh:
            if kind == "parquet":
                return pd.read_parquet(fh)
            return pd.read_csv(fh, low_memory=False)
    except FileNotFoundError as exc:
        raise DataError(f"source file not found: {uri}") from exc
    except (ConnectionError, TimeoutError) as exc:  # the store is unreachable: a retry may help
        raise PipelineError(f"cannot reach {uri}: {exc}") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"source file {uri} is empty: no header, no rows") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{uri} is not valid UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {uri} as {kind}: {exc}") from exc


def _to_utc(series: pd.Series, column: str) -> pd.Series:
    try:
        return pd.to_datetime(series, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise DataError(f"time column {column!r} has values that are not timestamps: {exc}") from exc


# Timestamps later than this past the wall clock are a broken clock or timezone, not data.
FUTURE_TOLERANCE = pd.Timedelta(days=1)


def _time_travel(column: str, rows: int, latest: object) -> DataError:
    return DataError(
        f"time column {column!r} has {rows} rows in the future (latest {latest}, now "
        f"{pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC): time-travel data; "
        "fix the source's clock or timezone"
    )


def refuse_time_travel(times: pd.Series, column: str) -> None:
    """Stop on rows stamped in the future: they would leak into windows that have not happened."""
    future = times > pd.Timestamp.now(tz="UTC") + FUTURE_TOLERANCE
    if future.any():
        raise _time_travel(column, int(future.sum()), times[future].max())


def _in_window(frame: pd.DataFrame, column: str, start: datetime, end: datetime) -> pd.DataFrame:
    if column not in frame.columns:
        raise DataError(f"time column {column!r} is missing from the source")
    times = _to_utc(frame[column], column)
    refuse_time_travel(times, column)
    mask = (times >= pd.Timestamp(start)) & (times < pd.Timestamp(end))
    out = frame.loc[mask].copy()
    out[column] = times[mask]
    return out


class FileSource:
    """A CSV or Parquet file; read whole, then filtered to the window."""

    def __init__(self, source: cfg.Source, time_column: str):
        self.source, self.time_column = source, time_column

    def read(self, start: datetime, end: datetime) -> pd.DataFrame:
        frame = read_table(self.source.uri or "", self.source.format)
        return _in_window(frame, self.time_column, start, end)


# A source query may scan a large table; it still may not hang for ever.
SOURCE_STATEMENT_TIMEOUT = 1800


class SqlSource:
    """A SQL table; only the window's rows leave the database."""

    def __init__(self, source: cfg.Source, time_column: str):
        self.source, self.time_column = source, time_column

    def read(self, start: datetime, end: datetime) -> pd.DataFrame:
        engine = sql_engine(self.source.url or "", statement_timeout_seconds=SOURCE_STATEMENT_TIMEOUT)
        try:
            table = sa.Table(self.source.table or "", sa.MetaData(), autoload_with=engine)
            if self.time_column not in table.c:
                raise DataError(f"time column {self.time_column!r} is missing from table {table.name!r}")
            column = table.c[self.time_column]
            query = sa.select(table).where(column >= start, column < end).order_by(column)
            horizon = (pd.Timestamp.now(tz="UTC") + FUTURE_TOLERANCE).to_pydatetime()
            future = sa.select(sa.func.count(), sa.func.max(column)).where(column > horizon)
            with engine.connect() as conn:  # the database may hold rows stamped in the future
                rows, latest = conn.execute(future).one()
                if rows:
                    raise _time_travel(self.time_column, rows, latest)
                frame = pd.read_sql(query, conn)
        except sa.exc.NoSuchTableError as exc:
            raise DataError(f"table {self.source.table!r} not found at the SQL source") from exc
        except sa.exc.OperationalError as exc:  # connection refused, timeout: a retry may help
            raise PipelineError(f"cannot read the SQL source: {exc.orig}") from exc
        finally:
            engine.dispose()
        frame[self.time_column] = _to_utc(frame[self.time_column], self.time_column)
        return frame


def _apply_join(frame: pd.DataFrame, join: cfg.Join, time_column: str) -> pd.DataFrame:
    lookup = read_table(join.uri, join.format)
    missing = [c for c in [*join.keys, *join.columns] if c not in lookup.columns]
    if missing:
        raise DataError(f"join table {join.uri} lacks columns {missing}")
    lookup = lookup[[*join.keys, *join.columns]]
    if time_column in join.keys:
        lookup[time_column] = _to_utc(lookup[time_column], time_column)
    absent = [c for c in join.keys if c not in frame.columns]
    if absent:
        raise DataError(f"cannot join {join.uri}: the data lacks join columns {absent}")
    overlap = [c for c in join.columns if c in frame.columns]
    lookup = lookup.drop_duplicates(join.keys)
    return frame.drop(columns=overlap).merge(lookup, on=join.keys, how="left", validate="many_to_one")


def open_source(dataset: cfg.Dataset) -> DataSource:
    """The source a dataset config names."""
    kinds: dict[str, Callable[[cfg.Source, str], DataSource]] = {"file": FileSource, "sql": SqlSource}
    return kinds[dataset.source.kind](dataset.source, dataset.time_column)


def read_window(dataset: cfg.Dataset, start: datetime, end: datetime) -> pd.DataFrame:
    """Raw rows of ``[start, end)`` with the lookup tables joined on, personal data pseudonymised."""
    frame = open_source(dataset).read(start, end)
    for join in dataset.source.joins:
        frame = _apply_join(frame, join, dataset.time_column)
    frame = privacy.pseudonymise(frame, dataset)  # before anything can write or log a raw value
    return frame.sort_values(dataset.time_column, kind="stable").reset_index(drop=True)
