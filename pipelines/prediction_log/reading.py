"""Reading windows back for monitoring: clock windows, Parquet parts by day or by event time, and
the join with feedback labels."""

from __future__ import annotations

from typing import Any

import pandas as pd

from pipelines import storage
from pipelines.prediction_log.base import CLOCKS
from pipelines.prediction_log.segments import _text_for_dates


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


def with_feedback(predictions: pd.DataFrame, feedback: pd.DataFrame) -> pd.DataFrame:
    """Predictions with a ``label`` column (NaN where no feedback arrived yet)."""
    if feedback.empty:
        return predictions.assign(label=float("nan"))
    labels = feedback.sort_values("ts").drop_duplicates(["request_id", "row"], keep="last")
    merged = predictions.merge(labels[["request_id", "row", "label"]], on=["request_id", "row"], how="left")
    return merged


def _dates_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A part's columns other than the two clocks as text where a date type got in (parts written
    before segments were read with the dates as strings): they concatenate with the other parts."""
    for column in frame.columns:
        if column not in CLOCKS and pd.api.types.is_datetime64_any_dtype(frame[column]):
            frame[column] = frame[column].astype(str).where(frame[column].notna(), None)
    return frame


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
