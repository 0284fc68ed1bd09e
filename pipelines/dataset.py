"""What a dataset config says about a frame: its label, its expected columns and its kept columns.

One home for labelling and source-column selection, imported by the steps (ingest, batch ingest,
drift), the feature store and the policy backtest, so none of them reaches into another's module.
"""

from __future__ import annotations

import logging

import pandas as pd

from pipelines.config import Dataset
from pipelines.errors import DataError

log = logging.getLogger(__name__)


def label_frame(frame: pd.DataFrame, dataset: Dataset) -> tuple[pd.DataFrame, int]:
    """``frame`` with the dataset's label column, unlabellable rows dropped; and how many were."""
    target = dataset.target
    missing = [c for c in target.required if c not in frame.columns]
    if missing:
        raise DataError(f"columns needed for the label {target.name!r} are missing: {missing}")
    dropped = 0
    if target.required:
        unlabelled = frame[target.required].isna().any(axis=1)
        dropped = int(unlabelled.sum())
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


def check_source_columns(frame: pd.DataFrame, dataset: Dataset) -> None:
    """With ``dataset.ignore_columns`` set, a source column the config does not name stops ingest."""
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


def select_columns(frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Keep the configured columns; a missing one is left out here and named by validate."""
    wanted = dataset.columns
    present = [c for c in wanted if c in frame.columns]
    absent = sorted(set(wanted) - set(present))
    if absent:
        log.warning("source lacks configured columns %s; validate will report them", absent)
    return frame[present]
