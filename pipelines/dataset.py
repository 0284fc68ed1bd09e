"""What a dataset config says about a frame: its label, its expected columns and its kept columns.

One home for labelling and source-column selection, imported by the steps (ingest, batch ingest,
drift), the feature store and the policy backtest, so none of them reaches into another's module.
"""

from __future__ import annotations

import logging
from typing import get_args

import pandas as pd

from pipelines.config import Dataset, DatePart
from pipelines.errors import DataError

log = logging.getLogger(__name__)
# Rows whose date parts may disagree with the time column before ingest stops (a rounding at a
# DST change, a stray row); a shifted time column disagrees on most rows.
MAX_DATE_PART_MISMATCH = 0.001
DATE_PARTS = get_args(DatePart)  # the parts a column may restate, as the config names them


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


def check_date_parts(frame: pd.DataFrame, dataset: Dataset, timezone: str) -> None:
    """Date-part columns (``dataset.date_parts``) must agree with the time column in ``timezone``."""
    named: dict[str, str] = (  # None: by name, where the source has them
        dict(dataset.date_parts) if dataset.date_parts is not None else {c: c for c in DATE_PARTS}
    )
    parts = {c: p for c, p in named.items() if c in frame.columns and c != dataset.time_column}
    if not parts or dataset.time_column not in frame.columns:
        return
    local = pd.to_datetime(frame[dataset.time_column], utc=True, errors="coerce").dt.tz_convert(timezone)
    found = []
    for column, part in parts.items():
        values = pd.to_numeric(frame[column], errors="coerce")
        known = values.notna() & local.notna()
        expected = getattr(local.dt, part)
        wrong = known & (values != expected)
        if known.any() and wrong.sum() > MAX_DATE_PART_MISMATCH * known.sum():
            first = wrong.idxmax()
            found.append(
                f"{column!r} on {int(wrong.sum())} of {int(known.sum())} rows"
                f" (e.g. {column}={values[first]:g} at {local[first]}, whose {part} is {expected[first]})"
            )
    if found:
        raise DataError(
            f"date-part columns contradict the time column {dataset.time_column!r} read in {timezone}: "
            + "; ".join(found)
            + ". The time is shifted or mislabelled: fix the source, or set dataset.date_parts to say"
            " which columns are date parts ({} for none)"
        )


def select_columns(frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Keep the configured columns; a missing one is left out here and named by validate."""
    wanted = dataset.columns
    present = [c for c in wanted if c in frame.columns]
    absent = sorted(set(wanted) - set(present))
    if absent:
        log.warning("source lacks configured columns %s; validate will report them", absent)
    return frame[present]
