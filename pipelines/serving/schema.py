"""The model's input schema, and request rows checked against it into arrays.

Requests arrive as JSON records. They are checked against the model's MLflow
signature by hand (a few dict lookups per row, every problem named), turned
into plain arrays, and scored without building a DataFrame per request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

NUMERIC_TYPES = {"double", "float", "long", "integer"}


class InvalidInput(ValueError):
    """A request that does not match the model's signature; ``errors`` names each problem."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5]))
        self.errors = errors


@dataclass(frozen=True)
class FeatureSchema:
    """The model's input columns, split by kind, in signature order."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    optional: frozenset[str] = frozenset()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @classmethod
    def from_signature(cls, signature) -> FeatureSchema:
        """Read the input schema of an MLflow signature (column names and types)."""
        if signature is None or signature.inputs is None:
            raise ValueError("the model has no signature: cannot validate requests")
        numeric, categorical, optional = [], [], set()
        for spec in signature.inputs.to_dict():
            kind = str(spec.get("type"))
            name = spec["name"]
            if kind in NUMERIC_TYPES:
                numeric.append(name)
            elif kind == "string":
                categorical.append(name)
            else:
                raise ValueError(f"input column {name!r} has type {kind!r}, which the server cannot take")
            if not spec.get("required", True):
                optional.add(name)
        return cls(tuple(numeric), tuple(categorical), frozenset(optional))


@dataclass
class Batch:
    """Validated rows as arrays: numeric (n, k) float64 and one object column per categorical."""

    numeric: np.ndarray
    categorical: list[list[str | None]]

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def frame(self, schema: FeatureSchema) -> pd.DataFrame:
        data: dict[str, Any] = {c: self.numeric[:, i] for i, c in enumerate(schema.numeric)}
        data |= {c: pd.Series(self.categorical[i], dtype=object) for i, c in enumerate(schema.categorical)}
        return pd.DataFrame(data, columns=list(schema.columns))

    def records(self, schema: FeatureSchema) -> list[dict[str, Any]]:
        """Rows back as dicts (for the prediction log); NaN becomes None."""
        num = self.numeric.tolist()
        out = []
        for r in range(len(self)):
            row = {c: (None if math.isnan(v) else v) for c, v in zip(schema.numeric, num[r], strict=True)}
            row |= {c: self.categorical[i][r] for i, c in enumerate(schema.categorical)}
            out.append(row)
        return out

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        cats = [
            list(chain.from_iterable(b.categorical[i] for b in batches))
            for i in range(len(batches[0].categorical))
        ]
        return Batch(np.vstack([b.numeric for b in batches]), cats)


# A category is a short label: bounded, and free of control characters (PostgreSQL's log refuses NUL).
MAX_TEXT = 1024
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: Any) -> str:
    """A value for an error message: short, and never ``repr`` of a container (deep nesting
    makes ``repr`` raise RecursionError, a 500 from a 2 KB body)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value[:40] if isinstance(value, str) else value)[:42]


def parse_records(records: Any, schema: FeatureSchema, *, max_rows: int) -> Batch:
    """Check JSON records against the schema and build arrays; raise InvalidInput naming every problem."""
    if not isinstance(records, list):
        raise InvalidInput([{"loc": ["records"], "msg": "must be a list of objects (one per row)"}])
    if not records:
        raise InvalidInput([{"loc": ["records"], "msg": "is empty: send at least one row"}])
    if len(records) > max_rows:
        raise InvalidInput([{"loc": ["records"], "msg": f"has {len(records)} rows; the limit is {max_rows}"}])
    allowed = set(schema.columns)
    required = allowed - schema.optional
    n = len(records)
    numeric = np.full((n, len(schema.numeric)), np.nan)
    categorical: list[list[str | None]] = [[None] * n for _ in schema.categorical]
    errors: list[dict[str, Any]] = []
    for r, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append({"loc": ["records", r], "msg": "must be an object of feature values"})
            continue
        keys = record.keys()
        if keys != allowed:
            for name in sorted(required - keys):
                errors.append({"loc": ["records", r, name], "msg": "field required"})
            for name in sorted(keys - allowed):
                errors.append({"loc": ["records", r, name], "msg": "unknown field (not a model input)"})
        for i, name in enumerate(schema.numeric):
            value = record.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append({"loc": ["records", r, name], "msg": f"must be a number, got {_shown(value)}"})
            elif not math.isfinite(value):
                errors.append({"loc": ["records", r, name], "msg": "must be finite (use null for missing)"})
            else:
                numeric[r, i] = value
        for i, name in enumerate(schema.categorical):
            value = record.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                errors.append({"loc": ["records", r, name], "msg": f"must be a string, got {_shown(value)}"})
            elif len(value) > MAX_TEXT or CONTROL.search(value):
                errors.append(
                    {
                        "loc": ["records", r, name],
                        "msg": f"must be at most {MAX_TEXT} characters with no control character",
                    }
                )
            else:
                categorical[i][r] = value
        if len(errors) >= 50:
            errors.append({"loc": ["records"], "msg": "too many errors; stopped after 50"})
            break
    if errors:
        raise InvalidInput(errors)
    return Batch(numeric, categorical)
