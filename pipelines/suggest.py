"""An expectation suite inferred from a training window (like TFX's SchemaGen), for a person to edit.

``mlops suggest-expectations`` writes one for a dataset; the validate step infers one on the spot
when the config names no suite file that exists, and says so. The suite says what the window
showed, with margins: the columns and their types, ranges widened by a tenth of their span,
value sets of the categoricals, null fractions, and the uniqueness of the key. It is a start:
a person tightens what they know (a percentage is 0..100) and loosens what they expect to move.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import yaml

from pipelines.config import Dataset

RANGE_MARGIN = 0.1  # ranges are widened on each side by this share of the window's span
MAX_SET_SIZE = 100  # categoricals with more distinct values get no value-set check
SET_MOSTLY = 0.99  # share of rows that must carry a value seen in the window
NULL_SLACK = 0.05  # a column may be this much more null than in the window
SPARSE = 0.5  # columns at least this null in the window get no null check

TYPE_LISTS = {
    "i": ["int64", "float64", "Int64", "Float64"],  # integers read as floats when a null comes
    "u": ["int64", "float64", "Int64", "Float64"],
    "f": ["float64", "Float64"],
    "b": ["bool", "boolean"],
    "O": ["object", "str", "string"],
}


def _entry(kind: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs}


def _number(value: float) -> float | int:
    """A bound as people write it: an integer when it is one, else 4 significant digits."""
    return int(value) if float(value).is_integer() else float(f"{value:.4g}")


def suggest(frame: pd.DataFrame, dataset: Dataset) -> list[dict[str, Any]]:
    """Expectations (``{type, kwargs}`` entries) describing ``frame``, a labelled training snapshot."""
    columns = [c for c in dataset.columns if c in frame.columns]
    numeric = [c for c in dataset.features.numeric if c in frame.columns]
    categorical = [c for c in dict.fromkeys([*dataset.features.categorical, *dataset.slices]) if c in frame]
    spec = [_entry("expect_column_to_exist", column=c) for c in columns]
    for column in columns:
        kind = frame[column].dtype.kind if not isinstance(frame[column].dtype, pd.StringDtype) else "O"
        if kind in TYPE_LISTS:
            spec.append(
                _entry("expect_column_values_to_be_in_type_list", column=column, type_list=TYPE_LISTS[kind])
            )
    for column in numeric:
        values = pd.to_numeric(frame[column], errors="coerce").dropna()
        if values.empty:
            continue
        low, high = float(values.min()), float(values.max())
        margin = RANGE_MARGIN * (high - low)
        lower = max(0.0, low - margin) if low >= 0 else low - margin  # no negative for a count
        spec.append(
            _entry(
                "expect_column_values_to_be_between",
                column=column,
                min_value=_number(lower),
                max_value=_number(high + margin),
                mostly=0.999,
            )
        )
    for column in categorical:
        values = frame[column].dropna().astype(str).unique()
        if 0 < len(values) <= MAX_SET_SIZE:
            spec.append(
                _entry(
                    "expect_column_values_to_be_in_set",
                    column=column,
                    value_set=sorted(values.tolist()),
                    mostly=SET_MOSTLY,
                )
            )
    for column in columns:
        null = float(frame[column].isna().mean())
        if null == 0:
            spec.append(_entry("expect_column_values_to_not_be_null", column=column))
        elif null < SPARSE:
            mostly = round(max(0.0, 1 - null - NULL_SLACK), 3)
            spec.append(_entry("expect_column_values_to_not_be_null", column=column, mostly=mostly))
    key = [c for c in dataset.key if c in frame.columns]
    if key and len(key) == len(dataset.key) and not frame.duplicated(subset=key).any():
        spec.append(_entry("expect_compound_columns_to_be_unique", column_list=key))
    return spec


def render(spec: list[dict[str, Any]], dataset: Dataset, origin: str) -> str:
    """The suite as YAML, one expectation per line, with a header that says where it came from."""
    lines = [
        f"# Expectation suite for {dataset.name}, inferred by `mlops suggest-expectations` from {origin}.",
        "# A start, not a verdict: tighten what you know (a percentage is 0..100), loosen what you",
        "# expect to move, delete what does not matter. Checks against the champion's training data,",
        "# and against constant or collapsed features, are added at run time whatever this file says.",
        f"name: {dataset.name}",
        "expectations:",
    ]
    for entry in spec:
        flow = yaml.safe_dump(entry, default_flow_style=True, sort_keys=False, width=10_000).strip()
        lines.append(f"  - {flow}")
    return "\n".join(lines) + "\n"
