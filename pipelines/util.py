"""Small helpers that several modules need: one home, so that none is written twice.

Plain JSON values, the wall clock, attribute-or-key access, strict config models, boolean
environment variables and month arithmetic.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from pipelines.errors import ConfigError


class Strict(BaseModel):
    """A config model that refuses unknown keys (a typo is an error, never a silent default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def utc_now() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def utc_now_iso() -> str:
    """The wall clock in UTC as ISO 8601, to the second (for tags and history entries)."""
    return utc_now().isoformat(timespec="seconds")


def plain(value: Any) -> Any:
    """JSON-able copy: numpy scalars to Python, NaN and infinities to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    return json.loads(json.dumps(value, default=str))


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for a mapping, ``obj.name`` otherwise; None when absent (or ``obj`` is None)."""
    if obj is None:
        return None
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean environment variable (1/true/yes/on, 0/false/no/off); anything else is an error."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def months(first: str, last: str) -> list[str]:
    """Each month from ``first`` to ``last`` inclusive, as ``YYYY-MM`` (either may be a full date)."""
    year, month = int(first[:4]), int(first[5:7])
    stop = (int(last[:4]), int(last[5:7]))
    out = []
    while (year, month) <= stop:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return out


def next_month(month: str) -> str:
    """The first day of the month after ``month`` (``YYYY-MM``), as ``YYYY-MM-DD``."""
    year, mon = int(month[:4]), int(month[5:7])
    year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
    return f"{year:04d}-{mon:02d}-01"


def replay_months(
    start_date: str, end_date: str | None, train_months: int = 3, now: datetime | None = None
) -> tuple[str, str, str]:
    """The months a replay of a dataset's span uses: ``(train_last, first, last)`` as ``YYYY-MM``.

    The first champion trains on the span's first ``train_months`` months; each month after them is
    served, up to the last full month of the span (``end_date`` is exclusive; no end: the last full
    month before ``now``). A span too short for one served month is an error that says so.
    """
    end = end_date or (now or utc_now()).strftime("%Y-%m-%d")
    year, month = int(end[:4]), int(end[5:7])  # the end's own month is not full (the end is exclusive)
    year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    last = f"{year:04d}-{month:02d}"
    span = months(start_date[:7], last) if start_date[:7] <= last else []
    if len(span) <= train_months:
        raise ConfigError(
            f"schedule.start_date {start_date} to end_date {end_date or 'now'} holds {len(span)} full "
            f"month(s): a replay needs more than {train_months} (the first champion trains on them)"
        )
    return span[train_months - 1], span[train_months], last
