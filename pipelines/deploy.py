"""Registry moves of a deployment: start a rollout, promote, abort, roll back.

The registry is the single source of truth the servers follow: aliases
``champion``, ``challenger`` and ``previous`` and the policy tag. Each move is
ordered so that every intermediate state a polling server may see is safe:
promotion moves ``champion`` before it ends the rollout, abort ends the
rollout before it drops ``challenger``.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from pipelines import audit, rollout, tracking
from pipelines.config import Rollout
from pipelines.errors import ConfigError
from pipelines.serving.policy import POLICY_TAG, Policy
from pipelines.settings import Settings
from pipelines.util import utc_now_iso

log = logging.getLogger(__name__)
PREVIOUS = "previous"
HISTORY_TAG = "mlops.deployment.history"


def current_policy(settings: Settings, name: str) -> Policy:
    registered = tracking.client(settings).get_registered_model(name)
    return Policy.from_json((registered.tags or {}).get(POLICY_TAG))


def aliases(settings: Settings, name: str) -> dict[str, str]:
    registered = tracking.client(settings).get_registered_model(name)
    return {k: str(v) for k, v in (registered.aliases or {}).items()}


def _write_policy(settings: Settings, name: str, policy: Policy) -> None:
    tracking.client(settings).set_registered_model_tag(name, POLICY_TAG, policy.to_json())


_AUDIT_KINDS = {
    "rollout_started": audit.ROLLOUT_STARTED,
    "promoted": audit.PROMOTED,
    "aborted": audit.ROLLOUT_ABORTED,
    "rolled_back": audit.ROLLED_BACK,
}


def _record(
    settings: Settings, name: str, event: dict[str, Any], origin: dict[str, Any] | None = None
) -> None:
    """Audit the move, and append it to a short history on the registered model (last 20 moves).

    ``origin`` is the run and trigger behind the move (:func:`pipelines.audit.origin`); without
    one, the move was made by a person at a terminal.
    """
    origin = origin or audit.manual_origin()
    details = {k: v for k, v in event.items() if k != "event"}
    if "from" in details:
        details["from_version"], details["to_version"] = details.pop("from"), details.pop("to")
    # Keyed only inside a run: the same version may legitimately be promoted again later.
    key = (
        f"{event['event']}:{event.get('version') or details.get('from_version')}"
        if origin["run_key"]
        else None
    )
    audit.record(settings, _AUDIT_KINDS[event["event"]], model=name, key=key, **origin, **details)
    client = tracking.client(settings)
    registered = client.get_registered_model(name)
    try:
        history = json.loads((registered.tags or {}).get(HISTORY_TAG) or "[]")
    except json.JSONDecodeError:
        history = []
    history = [*history, {"at": utc_now_iso(), **event}][-20:]
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))


def baseline_error(settings: Settings, name: str, version: str) -> float:
    """The champion's error rate on its test set (0.5, the most cautious, when unknown)."""
    accuracy = tracking.client(settings).get_model_version(name, version).tags.get("test.accuracy")
    return 1.0 - float(accuracy) if accuracy else 0.5


def start_rollout(
    settings: Settings, name: str, version: str, config: Rollout, origin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Put ``version`` into traffic by the configured strategy; ``direct`` promotes at once."""
    current = aliases(settings, name)
    champion = current.get(tracking.CHAMPION)
    if champion is None or config.strategy == "direct":
        why = "first champion" if champion is None else "direct (blue-green) switch"
        promote(settings, name, version, reason=why, origin=origin)
        return {"strategy": "direct", "decided": True, "decision": "promote", "reason": why}
    if champion == str(version):
        raise ConfigError(f"version {version} is already the champion of {name}")
    baseline = baseline_error(settings, name, champion)
    n = rollout.sample_size(baseline, config.min_detectable_effect, config.alpha, config.power)
    share = 1.0 if config.strategy == "shadow" else config.effective_share
    policy = Policy(
        strategy=config.strategy,
        challenger_version=str(version),
        share=share if config.strategy != "shadow" else 0.0,
        rollout_id=uuid.uuid4().hex[:12],
        started_at=utc_now_iso(),
        sample_size=n,
        test={
            "alpha": config.alpha,
            "power": config.power,
            "min_detectable_effect": config.min_detectable_effect,
            "baseline_error": baseline,
            "inconclusive": config.inconclusive,
            "champion_version": champion,
        },
    )
    client = tracking.client(settings)
    client.set_registered_model_alias(name, tracking.CHALLENGER, str(version))
    _write_policy(settings, name, policy)
    _record(
        settings,
        name,
        {"event": "rollout_started", "version": str(version), "strategy": config.strategy},
        origin,
    )
    log.info("rollout %s: %s of v%s vs champion v%s, %d labelled rows per arm", policy.rollout_id,
             config.strategy, version, champion, n)  # fmt: skip
    return {"strategy": config.strategy, "decided": False, "policy": json.loads(policy.to_json())}


def promote(
    settings: Settings, name: str, version: str, *, reason: str, origin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``version`` becomes champion, the old champion ``previous``; the rollout ends."""
    client = tracking.client(settings)
    current = aliases(settings, name)  # one read: only this DAG (one run at a time) moves aliases
    old = current.get(tracking.CHAMPION)
    if old is not None and old != str(version):
        client.set_registered_model_alias(name, PREVIOUS, old)
    client.set_registered_model_alias(name, tracking.CHAMPION, str(version))
    _write_policy(settings, name, Policy())
    if current.get(tracking.CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, tracking.CHALLENGER)
    client.set_model_version_tag(name, str(version), "deploy.decision", f"promoted: {reason}"[:500])
    client.set_model_version_tag(name, str(version), "deploy.promoted_at", utc_now_iso())
    event = {"event": "promoted", "version": str(version), "previous": old, "reason": reason}
    _record(settings, name, event, origin)
    log.info("%s v%s is champion (previous: %s): %s", name, version, old, reason)
    return {"champion": str(version), "previous": old}


def abort(
    settings: Settings, name: str, version: str, *, reason: str, origin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Traffic back to the champion; the challenger keeps a tag saying why it was stopped."""
    client = tracking.client(settings)
    _write_policy(settings, name, Policy())
    if aliases(settings, name).get(tracking.CHALLENGER) == str(version):
        client.delete_registered_model_alias(name, tracking.CHALLENGER)
    client.set_model_version_tag(name, str(version), "deploy.decision", f"aborted: {reason}"[:500])
    _record(settings, name, {"event": "aborted", "version": str(version), "reason": reason}, origin)
    champion = aliases(settings, name).get(tracking.CHAMPION)
    log.info("rollout of %s v%s aborted (%s); champion stays v%s", name, version, reason, champion)
    return {"champion": champion, "aborted": str(version)}


def rollback(
    settings: Settings, name: str, *, reason: str, origin: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Move ``champion`` back to ``previous`` and end any rollout; one step, no retraining."""
    current = aliases(settings, name)
    previous, champion = current.get(PREVIOUS), current.get(tracking.CHAMPION)
    if previous is None:
        raise ConfigError(f"{name} has no previous champion to roll back to (aliases: {current or 'none'})")
    client = tracking.client(settings)
    _write_policy(settings, name, Policy())
    client.set_registered_model_alias(name, tracking.CHAMPION, previous)
    # A second rollback must not bounce back to the version just rolled back from.
    client.delete_registered_model_alias(name, PREVIOUS)
    if champion:
        client.set_model_version_tag(name, champion, "deploy.decision", f"rolled back: {reason}"[:500])
    _record(
        settings, name, {"event": "rolled_back", "from": champion, "to": previous, "reason": reason}, origin
    )
    log.info("%s rolled back from v%s to v%s: %s", name, champion, previous, reason)
    return {"champion": previous, "rolled_back_from": champion, "reason": reason}
