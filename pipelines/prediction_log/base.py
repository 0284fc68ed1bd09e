"""The log's row layout, shared by both stores: column names, clocks, and rows as frames."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

INPUT_PREFIX = "input."
COLUMNS = [
    "request_id",
    "row",
    "ts",
    "event_time",
    "model_name",
    "model_version",
    "route",
    "routing_key",
    "rollout_id",
    "probability",
    "prediction",
    "latency_ms",
]
FEEDBACK_COLUMNS = ["request_id", "row", "label", "ts"]
FEEDBACK_DAY_FILE = "day.parquet"  # a finished day's feedback, merged (compact_feedback)

# Which clock a read's window is on: when the server answered (``ts``), or when the scored event
# happened (``event_time``, sent by the client, e.g. a replay of history; ``ts`` where absent).
CLOCKS = ("ts", "event_time")


def _stamp(value: Any) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _ms_to_utc(values: pd.Series) -> pd.Series:
    """Epoch milliseconds (missing or out-of-range: NaT) as UTC times, without float rounding traps.

    ``pd.to_datetime(unit="ms")`` on a float column raised FloatingPointError inside a long test
    session (an overflow check under ``np.errstate(over="raise")``); integer nanoseconds do not.
    """
    ms = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    valid = np.isfinite(ms) & (np.abs(ms) < 9.2e12)  # inside datetime64[ns]: +-2**63 ns is 9.22e12 ms
    ns = np.zeros(len(ms), dtype="int64")
    ns[valid] = np.round(ms[valid] * 1_000_000).astype("int64")
    out = pd.Series(pd.to_datetime(ns, utc=True), index=values.index)
    return out.where(valid)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Log rows (with an ``inputs`` dict each) as a flat frame with ``input.*`` columns."""
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    base = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=COLUMNS)
    base["ts"] = _ms_to_utc(base["ts"])
    base["event_time"] = _ms_to_utc(base["event_time"])
    base["row"] = base["row"].astype("int64")
    base["model_version"] = base["model_version"].astype(str)
    inputs = pd.DataFrame([r.get("inputs") or {} for r in rows]).add_prefix(INPUT_PREFIX)
    return pd.concat([base, inputs], axis=1)
