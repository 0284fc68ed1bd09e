"""Ingest: read the training window ending at the data interval's end, write a snapshot.

The window is ``[interval_end - window_months, interval_end)``. Rows that
cannot be labelled (e.g. cancelled flights) are dropped and counted. The
snapshot keeps only the key, time, feature and label columns, so columns that
leak the outcome never reach training. Its content hash is the data version.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipelines import feature_store, sources, storage
from pipelines.context import StepContext
from pipelines.dataset import check_date_parts, check_source_columns, label_frame, select_columns
from pipelines.errors import DataError
from pipelines.results import IngestResult, NoInputs, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: NoInputs) -> IngestResult | Skipped:
    """Read the window, label it, write the snapshot; return its URI, size and hash."""
    start, end = ctx.training_window()
    ctx.check_window(start.to_pydatetime(), end.to_pydatetime())
    log.info("ingesting %s rows scheduled in [%s, %s)", ctx.config.dataset.name, start, end)
    raw = sources.read_window(ctx.config.dataset, start.to_pydatetime(), end.to_pydatetime())
    if raw.empty:
        raise DataError(f"no rows in the source between {start} and {end}")
    check_source_columns(raw, ctx.config.dataset)
    check_date_parts(raw, ctx.config.dataset, ctx.config.schedule.timezone)
    labelled, dropped = label_frame(raw, ctx.config.dataset)
    labelled = feature_store.with_store_features(
        ctx.settings, ctx.config.dataset, labelled, end.to_pydatetime()
    )
    snapshot = select_columns(labelled, ctx.config.dataset).reset_index(drop=True)
    data_hash = storage.frame_hash(snapshot)
    uri = storage.write_parquet(storage.join(ctx.artifact_dir("ingest"), "snapshot.parquet"), snapshot)
    in_interval = snapshot[ctx.config.dataset.time_column] >= pd.Timestamp(ctx.interval_start)
    result: IngestResult = {
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
