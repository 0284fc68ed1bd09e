"""Spool segments (JSON lines the Parquet log's writer appends) read back as flat frames."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pandas as pd

from pipelines.prediction_log.base import COLUMNS, INPUT_PREFIX, _frame, _ms_to_utc

log = logging.getLogger(__name__)


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
