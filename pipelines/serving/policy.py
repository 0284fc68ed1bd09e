"""The deployment policy: which model answers which request.

The deploy step writes it as one JSON registered-model tag, so every replica
reads the same truth from the registry and a change is a single atomic write.
Blue-green is ``direct`` plus an atomic move of the ``champion`` alias.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

POLICY_TAG = "mlops.deployment"
STRATEGIES = ("direct", "canary", "shadow", "ab")
CHAMPION_ROUTE, CHALLENGER_ROUTE, SHADOW_ROUTE = "champion", "challenger", "shadow"


@dataclass(frozen=True)
class Policy:
    """Routing and the rollout's pre-registered test (sample size per arm, alpha, effect)."""

    strategy: Literal["direct", "canary", "shadow", "ab"] = "direct"
    challenger_version: str | None = None
    share: float = 0.0
    rollout_id: str | None = None
    started_at: str | None = None
    sample_size: int | None = None
    test: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if self.strategy != "direct" and not self.challenger_version:
            raise ValueError(f"strategy {self.strategy!r} needs a challenger version")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"share must be within [0, 1], got {self.share}")

    @property
    def in_rollout(self) -> bool:
        return self.strategy != "direct"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Policy:
        """Parse the tag; no tag means ``direct``. A malformed tag raises ValueError."""
        if not text:
            return cls()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("deployment policy must be a JSON object")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def ended(self) -> Policy:
        """Back to champion only."""
        return replace(Policy(), test={})


def _unit_interval(text: str, salt: bytes = b"") -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=salt[:64]).digest()
    return int.from_bytes(digest, "big") / 2**64


def route(
    policy: Policy, routing_key: str | None, rng: random.Random | None = None, salt: bytes = b""
) -> str:
    """``champion`` or ``challenger`` for one request (shadow answers from the champion).

    With a routing key the choice is sticky: the same key always lands on the same
    model during one rollout (hashing the key with the rollout id), and a new
    rollout reshuffles. ``salt`` (the deployment's secret) keys the hash, so a client
    cannot compute which keys land on the challenger. Without a key it is a fresh random draw.
    """
    if policy.strategy in ("direct", "shadow") or policy.share <= 0:
        return CHAMPION_ROUTE
    if routing_key is not None:
        u = _unit_interval(f"{policy.rollout_id}:{routing_key}", salt)
    else:
        u = (rng or random).random()
    return CHALLENGER_ROUTE if u < policy.share else CHAMPION_ROUTE
