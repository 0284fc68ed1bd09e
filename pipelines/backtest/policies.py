"""The retraining policies a backtest compares, and what one policy did month by month."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from pipelines.backtest.replay import Strategy
from pipelines.config import Monitoring, PipelineConfig


@dataclass(frozen=True)
class Policy:
    """When to retrain: never, every ``every`` months, or when ``monitoring`` says so."""

    name: str
    kind: Literal["never", "schedule", "monitor"]
    every: int = 1
    monitoring: Monitoring | None = None
    description: str = ""


def standard_policies(config: PipelineConfig) -> list[Policy]:
    """The policies compared by default: baselines, the old rule, each trigger alone, the configured one."""
    m = config.monitoring

    def only(**retrain: Any) -> Monitoring:
        flags = {"on_drift": False, "on_decay": False, "on_estimated_decay": False, "mode": "retrain"}
        return m.model_copy(update={"retrain": m.retrain.model_copy(update={**flags, **retrain})})

    old_rule = m.model_copy(
        update={
            "drift": m.drift.model_copy(update={"weighting": "none", "share": 0.3}),
            "performance": m.performance.model_copy(
                update={"baseline": "test", "max_drop": 0.05, "alpha": 0.499}
            ),
            "retrain": m.retrain.model_copy(
                update={"on_drift": True, "on_decay": True, "on_estimated_decay": False, "mode": "retrain"}
            ),
        }
    )
    weighted = only(on_drift=True)
    return [
        Policy("never", "never", description="the first champion serves every month"),
        Policy("monthly", "schedule", 1, description="retrain every month (a cron)"),
        Policy("quarterly", "schedule", 3, description="retrain every third month"),
        Policy(
            "drift-or-decay (old rule)",
            "monitor",
            monitoring=old_rule,
            description="30% of features drifted, or live AUC 0.05 below the in-window test score",
        ),
        Policy(
            "importance-weighted drift",
            "monitor",
            monitoring=weighted,
            description=f"importance-weighted drift share >= {m.drift.share}",
        ),
        Policy(
            "estimated decay (CBPE)",
            "monitor",
            monitoring=only(on_estimated_decay=True),
            description=f"label-free estimated ROC AUC drop > {m.performance.max_estimated_drop}",
        ),
        Policy(
            "significant decay",
            "monitor",
            monitoring=only(on_decay=True),
            description=(
                f"live AUC below the first served month by > {m.performance.max_drop},"
                f" p < {m.performance.alpha}"
            ),
        ),
        Policy("configured", "monitor", monitoring=m, description="monitoring.* as configured"),
    ]


@dataclass
class PolicyRun:
    """What one policy did, month by month."""

    policy: Policy
    strategy: Strategy
    months: list[dict[str, Any]] = field(default_factory=list)
    retrains: int = 0
    fit_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The policy's row of the comparison: live scores, cost, and its alarms against harm."""
        aucs = [m["live_auc"] for m in self.months if not math.isnan(m["live_auc"])]
        losses = [m["live_log_loss"] for m in self.months]
        alarms = [m for m in self.months if m["alarm"]]
        judged = [m for m in self.months if m.get("harm_next") is not None]
        hits = sum(1 for m in judged if m["alarm"] and m["harm_next"])
        harms = sum(1 for m in judged if m["harm_next"])
        raised = sum(1 for m in judged if m["alarm"])
        return {
            "policy": self.policy.name,
            "strategy": self.strategy.label,
            "mean_live_auc": float(np.mean(aucs)) if aucs else math.nan,
            "mean_log_loss": float(np.mean(losses)) if losses else math.nan,
            "retrains": self.retrains,
            "fit_seconds": round(self.fit_seconds, 1),
            "months_below_best": sum(1 for m in self.months if m["below_best"]),
            "alarms": len(alarms),
            "alarm_precision": hits / raised if raised else None,
            "alarm_recall": hits / harms if harms else None,
        }
