"""Small helpers that several modules need: one home, so that none is written twice.

Plain JSON values, the wall clock, attribute-or-key access, strict config models, boolean
environment variables and month arithmetic.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
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


def add_months(month: str, count: int) -> str:
    """``month`` (``YYYY-MM``, or a full date) moved by ``count`` months, as ``YYYY-MM``."""
    year, index = divmod(int(month[:4]) * 12 + int(month[5:7]) - 1 + count, 12)
    return f"{year:04d}-{index + 1:02d}"


def months(first: str, last: str) -> list[str]:
    """Each month from ``first`` to ``last`` inclusive, as ``YYYY-MM`` (either may be a full date)."""
    out = [first[:7]]
    while out[-1] <= last[:7]:
        out.append(add_months(out[-1], 1))
    return out[:-1]


def next_month(month: str) -> str:
    """The first day of the month after ``month`` (``YYYY-MM``), as ``YYYY-MM-DD``."""
    return f"{add_months(month, 1)}-01"


def replay_months(
    start_date: str,
    end_date: str | None,
    train_months: int = 3,
    now: datetime | None = None,
    *,
    train_last: str | None = None,
    first: str | None = None,
    last: str | None = None,
) -> tuple[str, str, str]:
    """The months a replay of a dataset's span uses: ``(train_last, first, last)`` as ``YYYY-MM``.

    Months given are kept; the replay starts the month after ``train_last``, which is the month
    before ``first``. What is missing comes from the span: the first champion trains on its first
    ``train_months`` months, and the replay runs to its last full month (``end_date`` is exclusive;
    no end: the last full month before ``now``). A span too short for one served month is an error
    that says so; the span is read only when a month is missing.
    """
    if first:
        train_last = train_last or add_months(first, -1)
    if not (train_last and last):
        end = end_date or (now or utc_now()).strftime("%Y-%m-%d")
        span = months(start_date, end)[:-1]  # the end's own month is not full (the end is exclusive)
        if len(span) <= train_months:
            raise ConfigError(
                f"schedule.start_date {start_date} to end_date {end_date or 'now'} holds {len(span)} full "
                f"month(s): a replay needs more than {train_months} (the first champion trains on them)"
            )
        train_last, last = train_last or span[train_months - 1], last or span[-1]
    return train_last, first or add_months(train_last, 1), last


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then restore what each name held before."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
