"""Request payloads of ``/predict`` and ``/feedback``: JSON bodies checked field by field.

Every problem is a :class:`~pipelines.serving.responses._Reject` (a 4xx answer); the rows
themselves are checked against the model's signature later (:mod:`pipelines.serving.schema`).
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any

import orjson

from pipelines.serving import security
from pipelines.serving.responses import _Reject

# Text a client sends that lands in the prediction log: bounded, and no control character
# (PostgreSQL refuses NUL in text and JSON; the others have no business in a key or an id).
MAX_KEY_CHARS = 256
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The log's `row` column is a 32-bit integer.
MAX_ROW = 2**31 - 1


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Reject(400, f"body is not valid JSON: {exc}") from None


def _text(value: str, what: str, limit: int = MAX_KEY_CHARS) -> str:
    """``value`` if it is short and free of control characters, else a 422 naming ``what``."""
    if len(value) > limit:
        raise _Reject(422, f"{what} is {len(value)} characters; the limit is {limit}")
    if CONTROL.search(value):
        raise _Reject(422, f"{what} must not contain control characters")
    return value


def _predict_payload(body: bytes) -> tuple[Any, str | None, float | None]:
    """``{"records": [...], "routing_key": "...", "event_time": "..."}``; ``dataframe_records``
    (MLflow's name) also works. ``event_time`` (ISO 8601 with offset, or epoch seconds) says when
    the scored events happened, for replays of history; monitoring can window on it."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise _Reject(422, 'body must be a JSON object like {"records": [{...}, ...]}')
    allowed = {"records", "dataframe_records", "routing_key", "event_time"}
    extra = sorted(set(payload) - allowed)
    if extra:
        raise _Reject(
            422, f"unknown top-level field(s) {extra}; expected 'records' and optional 'routing_key'"
        )
    if ("records" in payload) == ("dataframe_records" in payload):
        raise _Reject(422, "send the rows in exactly one field, 'records' (a list of objects)")
    key = payload.get("routing_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise _Reject(422, "routing_key must be a string")
    key = None if key is None else _text(str(key), "routing_key")
    records = payload.get("records", payload.get("dataframe_records"))
    return records, key, _parse_event_time(payload.get("event_time"))


# The prediction logs store event times as nanoseconds in 64 bits (pandas, PostgreSQL via pandas):
# 1677-09-21 to 2262-04-11. Outside it the SQL log failed the whole micro-batch with a 503.
EVENT_TIME_LIMIT_MS = 9_223_372_036_854.0


def _parse_event_time(value: Any) -> float | None:
    """Epoch milliseconds from ISO 8601 with an offset, or from epoch seconds."""
    if value is None:
        return None
    ms = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ms = float(value) * 1000
    elif isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            stamp = None
        if stamp is not None and stamp.tzinfo is not None:
            ms = stamp.timestamp() * 1000
    if ms is None:
        raise _Reject(
            422, "event_time must be ISO 8601 with a UTC offset (e.g. 2013-04-01T08:00:00Z) or epoch seconds"
        )
    if not abs(ms) < EVENT_TIME_LIMIT_MS:
        raise _Reject(422, "event_time must be between 1677-09-22 and 2262-04-11 (UTC)")
    return ms


def _feedback_payload(body: bytes, secret: bytes) -> list[dict[str, Any]]:
    """``{"feedback": [{"request_id": "...", "row": 0, "label": 1}, ...]}``, checked item by item;
    a request id this deployment did not issue is refused (nobody labels predictions it never made)."""
    payload = _json(body)
    items = payload.get("feedback") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or set(payload) != {"feedback"}:
        raise _Reject(
            422, 'body must be {"feedback": [{"request_id": "...", "row": 0, "label": 0 or 1}, ...]}'
        )
    if len(items) > 100_000:
        raise _Reject(413, f"{len(items)} feedback items; the limit is 100000 per request")
    now, out, errors = time.time() * 1000, [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"loc": ["feedback", i], "msg": "must be an object"})
            continue
        extra = set(item) - {"request_id", "row", "label"}
        if extra:
            errors.append({"loc": ["feedback", i], "msg": f"unknown field(s) {sorted(extra)}"})
        rid, row, label = item.get("request_id"), item.get("row", 0), item.get("label")
        if not isinstance(rid, str) or not rid:
            errors.append({"loc": ["feedback", i, "request_id"], "msg": "must be a non-empty string"})
        elif not security.issued_here(secret, rid):
            errors.append(
                {"loc": ["feedback", i, "request_id"], "msg": "is not a request id this server issued"}
            )
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
            errors.append({"loc": ["feedback", i, "row"], "msg": f"must be an integer from 0 to {MAX_ROW}"})
        if label not in (0, 1) or (not isinstance(label, bool | int)):
            errors.append({"loc": ["feedback", i, "label"], "msg": "must be 0, 1, true or false"})
        out.append({"request_id": rid, "row": row, "label": int(bool(label)), "ts": now})
        if len(errors) >= 50:
            break
    if errors:
        raise _Reject(422, "invalid feedback", errors)
    return out
