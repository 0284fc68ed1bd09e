"""Ingest batch: the rows of the data interval to score, without labels.

Unlike training's ingest, the window is exactly the run's data interval and no
label is needed (at scoring time the outcome is not known yet). Label columns
are dropped if the source has them, so they can never leak into the output.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipelines import feature_store, sources, storage
from pipelines.context import StepContext
from pipelines.dataset import check_date_parts, check_source_columns
from pipelines.errors import DataError
from pipelines.results import IngestBatchResult, NoInputs, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: NoInputs) -> IngestBatchResult | Skipped:
    """Read ``[interval_start, interval_end)``; write the unlabelled snapshot."""
    dataset = ctx.config.dataset
    start, end = pd.Timestamp(ctx.interval_start), pd.Timestamp(ctx.interval_end)
    ctx.check_window()
    log.info("reading %s rows scheduled in [%s, %s) to score", dataset.name, start, end)
    raw = sources.read_window(dataset, ctx.interval_start, ctx.interval_end)
    if raw.empty:
        raise DataError(f"no rows to score in the source between {start} and {end}")
    check_source_columns(raw, ctx.config.dataset)
    check_date_parts(raw, ctx.config.dataset, ctx.config.schedule.timezone)
    raw = feature_store.with_store_features(ctx.settings, dataset, raw, ctx.interval_end)
    wanted = list(dict.fromkeys([*dataset.key, dataset.time_column, *dataset.features.all, *dataset.slices]))
    absent = [c for c in wanted if c not in raw.columns]
    if absent:
        log.warning("source lacks configured columns %s; validate will report them", absent)
    snapshot = raw[[c for c in wanted if c in raw.columns]].reset_index(drop=True)
    data_hash = storage.frame_hash(snapshot)
    uri = storage.write_parquet(storage.join(ctx.artifact_dir("ingest_batch"), "snapshot.parquet"), snapshot)
    log.info("batch snapshot: %d rows, hash %s", len(snapshot), data_hash[:12])
    return {
        "snapshot_uri": uri,
        "rows": len(snapshot),
        "labelled": False,
        "data_hash": data_hash,
        "columns": list(snapshot.columns),
        "interval": {"start": start.isoformat(), "end": end.isoformat()},
    }
