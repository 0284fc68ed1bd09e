"""Ingest: read the training window ending at the data interval's end, write a snapshot.

The window is ``[interval_end - window_months, interval_end)``. Rows that
cannot be labelled (e.g. cancelled flights) are dropped and counted. The
snapshot keeps only the key, time, feature and label columns, so columns that
leak the outcome never reach training. Its content hash is the data version.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from pipelines import feature_store, sources, storage
from pipelines.config import Dataset
from pipelines.context import StepContext, parse_time
from pipelines.errors import DataError

log = logging.getLogger(__name__)


def training_window(ctx: StepContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The window this run trains on: ``window_months`` back from the interval's end.

    Counted in the dataset's timezone, so a window that crosses a DST change
    still starts at local midnight. It starts no earlier than the dataset's data
    (``schedule.start_date``): a 12-month window in March 2013 is January to March,
    and the model's tags say so.
    """
    schedule = ctx.config.schedule
    end = pd.Timestamp(ctx.interval_end).tz_convert(schedule.timezone)
    start = end - pd.DateOffset(months=ctx.config.ingest.window_months)
    first = pd.Timestamp(parse_time(schedule.start_date, "schedule.start_date", schedule.timezone))
    return max(start, first).tz_convert("UTC"), end.tz_convert("UTC")


def add_label(frame: pd.DataFrame, ctx: StepContext) -> tuple[pd.DataFrame, int]:
    """Evaluate the target expression; drop rows that cannot be labelled and count them."""
    return label_frame(frame, ctx.config.dataset)


def label_frame(frame: pd.DataFrame, dataset: Dataset) -> tuple[pd.DataFrame, int]:
    """``frame`` with the dataset's label column, unlabellable rows dropped; and how many were."""
    target = dataset.target
    missing = [c for c in target.required if c not in frame.columns]
    if missing:
        raise DataError(f"columns needed for the label {target.name!r} are missing: {missing}")
    unlabelled = frame[target.required].isna().any(axis=1) if target.required else None
    dropped = int(unlabelled.sum()) if unlabelled is not None else 0
    if dropped:
        frame = frame.loc[~unlabelled].copy()
    try:
        label = frame.eval(target.expression)
    except Exception as exc:
        raise DataError(f"cannot evaluate target {target.expression!r}: {exc}") from exc
    if not pd.api.types.is_bool_dtype(label):
        raise DataError(
            f"target {target.expression!r} must give true/false, got {label.dtype} values "
            f"(write a comparison such as 'arr_delay > 15')"
        )
    frame[target.name] = label.astype(bool)
    return frame, dropped


def check_source_columns(frame: pd.DataFrame, ctx: StepContext) -> None:
    """With ``dataset.ignore_columns`` set, a source column the config does not name stops ingest."""
    dataset = ctx.config.dataset
    if dataset.ignore_columns is None:
        return
    known = set(dataset.source_columns) | set(dataset.ignore_columns) | set(dataset.personal_data.columns)
    unexpected = [c for c in frame.columns if c not in known]
    if unexpected:
        missing = [c for c in dataset.source_columns if c not in frame.columns]
        hint = f"; configured columns missing: {missing} (renamed?)" if missing else ""
        raise DataError(
            f"the source has columns the config does not name: {unexpected}{hint}. "
            "Use them as features, or list them under dataset.ignore_columns"
        )


def select_columns(frame: pd.DataFrame, ctx: StepContext) -> pd.DataFrame:
    """Keep the configured columns; a missing one is left out here and named by validate."""
    wanted = ctx.config.dataset.columns
    present = [c for c in wanted if c in frame.columns]
    absent = sorted(set(wanted) - set(present))
    if absent:
        log.warning("source lacks configured columns %s; validate will report them", absent)
    return frame[present]


def run(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """Read the window, label it, write the snapshot; return its URI, size and hash."""
    start, end = training_window(ctx)
    ctx.check_window(start.to_pydatetime(), end.to_pydatetime())
    log.info("ingesting %s rows scheduled in [%s, %s)", ctx.config.dataset.name, start, end)
    raw = sources.read_window(ctx.config.dataset, start.to_pydatetime(), end.to_pydatetime())
    if raw.empty:
        raise DataError(f"no rows in the source between {start} and {end}")
    check_source_columns(raw, ctx)
    labelled, dropped = add_label(raw, ctx)
    labelled = feature_store.with_store_features(
        ctx.settings, ctx.config.dataset, labelled, end.to_pydatetime()
    )
    snapshot = select_columns(labelled, ctx).reset_index(drop=True)
    data_hash = storage.frame_hash(snapshot)
    uri = storage.write_parquet(storage.join(ctx.artifact_dir("ingest"), "snapshot.parquet"), snapshot)
    in_interval = snapshot[ctx.config.dataset.time_column] >= pd.Timestamp(ctx.interval_start)
    result = {
        "snapshot_uri": uri,
        "rows": len(snapshot),
        "rows_in_interval": int(in_interval.sum()),
        "dropped_unlabelled": dropped,
        "data_hash": data_hash,
        "columns": list(snapshot.columns),
        "interval": {"start": ctx.interval_start.isoformat(), "end": ctx.interval_end.isoformat()},
        "window": {"start": start.isoformat(), "end": end.isoformat()},
    }
    storage.write_json(storage.join(ctx.artifact_dir("ingest"), "result.json"), result)
    log.info("snapshot: %d rows (%d dropped as unlabelled), hash %s", len(snapshot), dropped, data_hash[:12])
    return result
