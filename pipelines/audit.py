"""The audit trail: who or what started a run, what was decided, which version moved where.

Every event is one small JSON document in the artifact store, so the trail lives
wherever the artifacts live (a local folder or ``s3://``) and survives the
Airflow and MLflow databases::

    {artifact_root}/audit/{YYYY}/{MM}/{stamp}-{kind}-{id}.json   the event
    {artifact_root}/audit/ids/{id}.json                          idempotency index (keyed events)

An event is ``{"id", "time", "kind", "model", "run_key", "trigger", "details"}``;
``time`` is the UTC wall clock, ``stamp`` the same instant as ``20260501T120301123456Z``.

- **Cheap to query**: the name carries the time and the kind, so a query prunes
  whole years by listing ``audit/`` and filters time and kind by name, reading
  only the events it may return (in one batch: concurrent GETs on S3).
- **Idempotent**: an event with a ``run_key`` or a ``key`` has an id hashed from
  (kind, model, run_key, key), and its index file sits at a name known in
  advance, so a retried task finds it with one request instead of a listing.
  The index is written *before* the event and holds the whole event, so a try
  that died between the two writes is healed by the retry, which writes the
  same event at the same path. Readers also drop repeated ids, so even two
  tries racing each other show one event. The first record wins: a retry's
  details do not overwrite it.
- **Nothing secret**: keys that look like credentials (token, password, secret,
  authorization, ...) are dropped from ``details`` and ``trigger`` at any depth,
  and the password of a URL (``scheme://user:pw@host``) is masked. The only
  person named is the Airflow user who triggered a run.

Writes go through :mod:`pipelines.storage` (atomic on a local disk, one PUT on
S3). This module imports no ML library (and :mod:`pipelines.storage` only when
used), so Airflow code may import it at DAG-parse time.

Who or what started a run is classified by :mod:`pipelines.triggers` (:func:`trigger_info` is
re-exported here), credentials are dropped by :mod:`pipelines.redaction` (:func:`scrub`), and the
``mlops audit`` command that lists the trail is :mod:`pipelines.audit_cli`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pipelines.redaction import scrub
from pipelines.settings import Settings
from pipelines.triggers import trigger_info
from pipelines.util import utc_now

log = logging.getLogger(__name__)

RUN_TRIGGERED = "run_triggered"
GATE_DECIDED = "gate_decided"
VERSION_REGISTERED = "version_registered"
APPROVAL_REQUESTED = "approval_requested"
APPROVED = "approved"
REJECTED = "rejected"
ROLLOUT_STARTED = "rollout_started"
PROMOTED = "promoted"
ROLLOUT_ABORTED = "rollout_aborted"
ROLLED_BACK = "rolled_back"
RETRAIN_REQUESTED = "retrain_requested"
KINDS = (
    RUN_TRIGGERED,
    GATE_DECIDED,
    VERSION_REGISTERED,
    APPROVAL_REQUESTED,
    APPROVED,
    REJECTED,
    ROLLOUT_STARTED,
    PROMOTED,
    ROLLOUT_ABORTED,
    ROLLED_BACK,
    RETRAIN_REQUESTED,
)

AUDIT_DIR = "audit"
INDEX_DIR = "ids"
STAMP_FORMAT = "%Y%m%dT%H%M%S%fZ"
# details keys naming the model version an event is about (``--version`` matches any of them)
VERSION_KEYS = ("version", "from_version", "to_version")

_EVENT_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<kind>[a-z_]+)-(?P<id>[0-9a-f]+)\.json$")


_now = utc_now  # the wall clock (a seam for tests)


def event_id(kind: str, model: str, run_key: str | None = None, key: Any = None) -> str:
    """The id of an event: a hash of what identifies it when keyed, else random."""
    if run_key is None and key is None:
        return uuid.uuid4().hex
    identity = json.dumps([kind, model, run_key, key], default=str, sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def audit_root(settings: Settings) -> str:
    """Where the trail lives: ``{artifact_root}/audit``."""
    from pipelines.storage import join

    return join(settings.artifact_root, AUDIT_DIR)


def _fs(uri: str):
    """(filesystem, path) of ``uri``, with the listing cache of an object store dropped.

    Another process (another task, the API server) may have written since this process listed.
    """
    import fsspec

    from pipelines.storage import options

    fs, path = fsspec.core.url_to_fs(uri, **options(uri))
    fs.invalidate_cache(path)  # the path and its parents
    cache = getattr(fs, "dircache", None)
    if cache:  # and everything below it: s3fs reads sizes and existence from cached listings
        for cached in [k for k in cache if k.startswith(path.rstrip("/") + "/")]:
            cache.pop(cached, None)
    return fs, path


def _read_if_exists(uri: str) -> Any:
    from pipelines.storage import read_json

    fs, path = _fs(uri)
    if not fs.exists(path):
        return None
    return read_json(uri)


def record(
    settings: Settings,
    kind: str,
    *,
    model: str,
    run_key: str | None = None,
    trigger: dict[str, Any] | None = None,
    key: Any = None,
    **details: Any,
) -> dict[str, Any]:
    """Append one event to the trail and return it (the one recorded before, on a retry).

    ``run_key`` (``dag_id/run_id``) or ``key`` make the event idempotent: recording the same
    (kind, model, run_key, key) again returns the first event and writes nothing new. Pass a
    ``key`` when one run may legitimately make several events of a kind (e.g. the version for
    ``version_registered``, since a cleared task may register another one). ``trigger`` is a
    :func:`trigger_info` result; ``details`` are free JSON-able fields (``version``,
    ``decision``, ``reason`` are shown by the CLI).
    """
    from pipelines.storage import join, write_json

    if kind not in KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}; choose one of {', '.join(KINDS)}")
    keyed = run_key is not None or key is not None
    ident = event_id(kind, model, run_key, key)
    now = _now().astimezone(UTC)
    event = {
        "id": ident,
        "time": now.isoformat(timespec="microseconds"),
        "kind": kind,
        "model": model,
        "run_key": run_key,
        "trigger": scrub(trigger) if trigger else None,
        "details": scrub(details),
    }
    root = audit_root(settings)
    rel = f"{now:%Y}/{now:%m}/{now.strftime(STAMP_FORMAT)}-{kind}-{ident}.json"
    if keyed:
        index = join(root, INDEX_DIR, f"{ident}.json")
        found = _read_if_exists(index)
        if found is not None:
            target = join(root, found["path"])
            if _read_if_exists(target) is None:  # the first try died between its two writes
                write_json(target, found["event"])
            log.info("audit event %s %s already recorded at %s", kind, ident, found["event"]["time"])
            return found["event"]
        write_json(index, {"path": rel, "event": event})
    write_json(join(root, rel), event)
    return event


def origin(ctx: Any) -> dict[str, Any]:
    """``run_key`` and ``trigger`` of a step's run (a :class:`pipelines.context.StepContext`)."""
    return {"run_key": ctx.run_key, "trigger": trigger_info(ctx.run_type, **(ctx.trigger or {}))}


def manual_origin() -> dict[str, Any]:
    """A person at a terminal (``mlops rollback``, a script): the OS user, no run."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    return {"run_key": None, "trigger": trigger_info("manual", user=user)}


def record_step(ctx: Any, kind: str, *, key: Any = None, **details: Any) -> dict[str, Any]:
    """Record an event of a pipeline step's run (model, run key and trigger from its context)."""
    return record(ctx.settings, kind, model=ctx.config.registry.model_name, key=key, **origin(ctx), **details)


def parse_when(value: str | datetime) -> datetime:
    """A UTC datetime from a datetime or ISO text (``2026-05``, ``2026-05-01``, ``...T12:00Z``).

    A naive value is read as UTC.
    """
    if isinstance(value, datetime):
        when = value
    else:
        text = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}", text):
            text += "-01"
        try:
            when = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not a date or time: {value!r}") from exc
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _candidates(root: str, since: datetime | None, until: datetime | None, kinds: set[str] | None):
    """Event files whose name fits the time window and kinds, one per id (the earliest)."""
    fs, path = _fs(root)
    if not fs.exists(path):
        return fs, []
    chosen: dict[str, tuple[datetime, str]] = {}
    for year_path in sorted(fs.ls(path, detail=False)):
        year = year_path.rstrip("/").rsplit("/", 1)[-1]
        if not re.fullmatch(r"\d{4}", year):
            continue  # the index, anything else
        if (since and int(year) < since.year) or (until and int(year) > until.year):
            continue
        for file in fs.find(year_path):
            match = _EVENT_NAME.match(file.rsplit("/", 1)[-1])
            if not match:
                continue  # a temporary file of a write in progress, a stray file
            when = datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
            if (since and when < since) or (until and when >= until):
                continue
            if kinds and match["kind"] not in kinds:
                continue
            if match["id"] not in chosen or (when, file) < chosen[match["id"]]:
                chosen[match["id"]] = (when, file)
    return fs, [file for _, file in sorted(chosen.values())]


def event_versions(event: Mapping[str, Any]) -> set[str]:
    """The model versions an event is about (its details' :data:`VERSION_KEYS`)."""
    details = event.get("details") or {}
    return {str(details[k]) for k in VERSION_KEYS if details.get(k) is not None}


def events(
    settings: Settings,
    *,
    model: str | None = None,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    kinds: Iterable[str] | None = None,
    run_key: str | None = None,
    version: str | int | None = None,
) -> list[dict[str, Any]]:
    """Events of the trail, oldest first; ``since`` is inclusive, ``until`` exclusive.

    ``version`` matches an event whose details name it as ``version``, ``from_version`` or
    ``to_version``.
    """
    start = parse_when(since) if since is not None else None
    end = parse_when(until) if until is not None else None
    wanted = set(kinds) if kinds else None
    fs, files = _candidates(audit_root(settings), start, end, wanted)
    if not files:
        return []
    found = []
    for file, data in fs.cat(files, on_error="return").items():
        if isinstance(data, BaseException):
            log.warning("audit event %s unreadable: %s", file, data)
            continue
        try:
            event = json.loads(data)
        except json.JSONDecodeError as exc:
            log.warning("audit event %s is not JSON: %s", file, exc)
            continue
        if model is not None and event.get("model") != model:
            continue
        if run_key is not None and event.get("run_key") != run_key:
            continue
        if version is not None and str(version) not in event_versions(event):
            continue
        found.append(event)
    return sorted(found, key=lambda e: (parse_when(e["time"]), e["id"]))
