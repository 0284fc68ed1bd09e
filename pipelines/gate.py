"""The promotion gate: an absolute floor, "no worse than the champion", slice gaps, swing band.

Thresholds come from config. The change check is skipped when there is no
champion yet (the first model). Metrics are "higher is better"; log loss
enters as ``neg_log_loss``. The slice check (best minus worst slice of each
slice column) always reports and rejects only with ``gate.slices.gating``. A
candidate that passes but differs from the champion by more than
``gate.swing_band`` is marked for human approval instead of automatic rollout.
"""

from __future__ import annotations

import math
from typing import Any

from pipelines.config import Gate, SliceGate


def metric_value(metrics: dict[str, Any] | None, name: str) -> float | None:
    """The metric as "higher is better", or None when it is missing or NaN."""
    negate = name == "neg_log_loss"
    value = (metrics or {}).get("log_loss" if negate else name)
    if value is None or math.isnan(float(value)):
        return None
    return -float(value) if negate else float(value)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def slice_gaps(check: SliceGate, slices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The candidate's best-minus-worst slice score per slice column (evaluate's slice table)."""
    columns: dict[str, Any] = {}
    for column, table in slices.items():
        scored = {
            value: row["roc_auc"]["candidate"]
            for value, row in table.items()
            if row["rows"] >= check.min_rows and row["roc_auc"].get("candidate") is not None
        }
        unscored = sorted(value for value in table if value not in scored)
        if len(scored) < 2:
            columns[column] = {
                "gap": None, "passed": True, "scored": len(scored), "unscored": unscored,
                "reason": f"fewer than two {column} slices with {check.min_rows}+ rows and both classes",
            }  # fmt: skip
            continue
        best, worst = max(scored, key=scored.__getitem__), min(scored, key=scored.__getitem__)
        gap = scored[best] - scored[worst]
        columns[column] = {
            "gap": gap,
            "best": {"value": best, "score": scored[best]},
            "worst": {"value": worst, "score": scored[worst]},
            "passed": gap <= check.max_gap,
            "scored": len(scored),
            "unscored": unscored,
        }
    return {
        "metric": check.metric,
        "max_gap": check.max_gap,
        "min_rows": check.min_rows,
        "gating": check.gating,
        "passed": all(c["passed"] for c in columns.values()),
        "columns": columns,
    }


def decide(
    gate: Gate,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    not_comparable: str | None = None,
    fairness: dict[str, Any] | None = None,
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
    if fairness:
        for column, gap in (fairness.get("columns") or {}).items():
            if gap["gap"] is None or not fairness["gating"]:
                continue
            checks.append(
                {
                    "check": f"slice_gap:{column}",
                    "metric": fairness["metric"],
                    "candidate": gap["gap"],
                    "threshold": fairness["max_gap"],
                    "reason": f"best {gap['best']['value']} {gap['best']['score']:.4f}, "
                    f"worst {gap['worst']['value']} {gap['worst']['score']:.4f}",
                    "passed": gap["passed"],
                }
            )
    passed = all(c["passed"] for c in checks)
    failed = [c for c in checks if not c["passed"]]
    if passed:
        reason = f"{gate.metric} {value:.4f} passes every check"
    else:
        reason = "; ".join(_failure(c, gate.metric) for c in failed)
    approval_reason = _swing(gate, value, champion_value, champion is not None and not not_comparable)
    return {
        "passed": passed,
        "metric": gate.metric,
        "reason": reason,
        "checks": checks,
        "approval_required": passed and approval_reason is not None,
        "approval_reason": approval_reason if passed else None,
    }


def _failure(check: dict[str, Any], metric: str) -> str:
    if check["check"].startswith("slice_gap:"):
        return (
            f"{check['check']}: {check['metric']} gap {_fmt(check['candidate'])} > "
            f"{_fmt(check['threshold'])} ({check['reason']})"
        )
    return f"{check['check']}: {metric} {_fmt(check['candidate'])} < {_fmt(check['threshold'])}"


def _swing(gate: Gate, value: float | None, champion: float | None, comparable: bool) -> str | None:
    """Why a person must approve this candidate (a change wider than the band), or None."""
    if gate.swing_band is None or not comparable or value is None or champion is None:
        return None
    delta = value - champion
    if abs(delta) <= gate.swing_band:
        return None
    return (
        f"{gate.metric} {value:.4f} vs champion {champion:.4f}: a change of {delta:+.4f}, wider than "
        f"the swing band ±{gate.swing_band}; a swing that wide usually means a data problem"
    )
