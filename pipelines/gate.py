"""The promotion gate: an absolute floor plus "no worse than the champion".

Both thresholds come from config. The change check is skipped when there is
no champion yet (the first model). Metrics are "higher is better"; log loss
enters as ``neg_log_loss``.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.config import Gate


def metric_value(metrics: dict[str, Any] | None, name: str) -> float | None:
    """The metric as "higher is better", or None when it is missing or NaN."""
    negate = name == "neg_log_loss"
    value = (metrics or {}).get("log_loss" if negate else name)
    if value is None or math.isnan(float(value)):
        return None
    return -float(value) if negate else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(
    gate: Gate, candidate: dict[str, Any], champion: dict[str, Any] | None, not_comparable: str | None = None
) -> dict[str, Any]:
    """Return the decision with each check's numbers, so the reason is never a mystery."""
    value = metric_value(candidate, gate.metric)
    checks = []
    absolute_ok = value is not None and value >= gate.min_value
    checks.append(
        {
            "check": "absolute",
            "metric": gate.metric,
            "candidate": value,
            "threshold": gate.min_value,
            "passed": absolute_ok,
        }
    )
    champion_value = metric_value(champion, gate.metric)
    if champion is None or not_comparable or champion_value is None:
        reason = (
            "no champion yet"
            if champion is None
            else not_comparable or f"the champion has no {gate.metric} on this test set"
        )
        checks.append({"check": "vs_champion", "skipped": True, "reason": reason, "passed": True})
    else:
        floor = champion_value - gate.max_drop
        checks.append(
            {
                "check": "vs_champion",
                "metric": gate.metric,
                "candidate": value,
                "champion": champion_value,
                "max_drop": gate.max_drop,
                "threshold": floor,
                "delta": None if value is None else value - champion_value,
                "passed": value is not None and value >= floor,
            }
        )
    passed = all(c["passed"] for c in checks)
    failed = [c for c in checks if not c["passed"]]
    if passed:
        reason = f"{gate.metric} {value:.4f} passes every check"
    else:
        reason = "; ".join(
            f"{c['check']}: {gate.metric} {_fmt(c['candidate'])} < {_fmt(c['threshold'])}" for c in failed
        )
    return {"passed": passed, "metric": gate.metric, "reason": reason, "checks": checks}
