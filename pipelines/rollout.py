"""The online test that decides a rollout, fixed before any traffic moves.

- canary and A/B: a two-sided two-proportion z-test on the error rate of the
  champion's and the challenger's answers, on exactly the first ``n`` labelled
  rows of each arm, where ``n`` comes from a power calculation done when the
  rollout starts (baseline error, smallest effect worth detecting, alpha,
  power). Looking only once, at ``n``, keeps the false-alarm rate at alpha.
- shadow: both models scored the same rows, so the test is paired: an exact
  McNemar test on the rows where exactly one of them was right.

Outcome: ``promote`` when the challenger is significantly better, ``abort``
when it is significantly worse, and the configured choice when the test is
inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy import stats

from pipelines.pipeline import Status
from pipelines.serving.policy import CHALLENGER_ROUTE, CHAMPION_ROUTE, SHADOW_ROUTE, Policy


def sample_size(baseline_error: float, effect: float, alpha: float, power: float) -> int:
    """Rows per arm for a two-sided two-proportion test to detect ``effect`` in error rate."""
    p1 = min(max(baseline_error, 0.01), 0.99)
    p2 = min(p1 + effect, 0.999) if p1 + effect < 1 else max(p1 - effect, 0.001)
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    p_bar = (p1 + p2) / 2
    n = (z_a * math.sqrt(2 * p_bar * (1 - p_bar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2
    return math.ceil(n / (p2 - p1) ** 2)


def two_proportion_test(errors_a: int, n_a: int, errors_b: int, n_b: int) -> tuple[float, float]:
    """(z, two-sided p) for error rate b minus error rate a, pooled standard error."""
    pooled = (errors_a + errors_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 0.0, 1.0
    z = (errors_b / n_b - errors_a / n_a) / se
    return z, float(2 * stats.norm.sf(abs(z)))


@dataclass(frozen=True)
class Verdict:
    """The outcome and every number behind it."""

    status: Status  # waiting or decided
    decision: str | None  # "promote" / "abort" when decided
    reason: str
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "decision": self.decision, "reason": self.reason, **self.numbers}


def _labelled(frame: pd.DataFrame, route: str) -> pd.DataFrame:
    arm = frame[(frame["route"] == route) & frame["label"].notna()]
    return arm.sort_values("ts", kind="stable")


def _decide(significant: bool, challenger_better: bool, inconclusive: str) -> tuple[str, str]:
    if significant and challenger_better:
        return "promote", "challenger significantly better"
    if significant:
        return "abort", "challenger significantly worse"
    return inconclusive, f"no significant difference: {inconclusive} (configured)"


def analyse(frame: pd.DataFrame, policy: Policy, inconclusive: str) -> Verdict:
    """Decide from the prediction log joined with feedback (``label`` column), or say how far along it is."""
    n, alpha = int(policy.sample_size or 0), float(policy.test.get("alpha", 0.05))
    if policy.rollout_id is not None and "rollout_id" in frame:
        frame = frame[frame["rollout_id"] == policy.rollout_id]
    if policy.strategy == "shadow":
        return _analyse_shadow(frame, n, alpha, inconclusive)
    champion, challenger = _labelled(frame, CHAMPION_ROUTE), _labelled(frame, CHALLENGER_ROUTE)
    progress = {
        "sample_size": n,
        "labelled_champion": len(champion),
        "labelled_challenger": len(challenger),
        "served_champion": int((frame["route"] == CHAMPION_ROUTE).sum()),
        "served_challenger": int((frame["route"] == CHALLENGER_ROUTE).sum()),
    }
    if len(champion) < n or len(challenger) < n:
        return Verdict(Status.WAITING, None, "collecting the fixed sample", progress)
    a, b = champion.head(n), challenger.head(n)
    err_a = int((a["prediction"] != a["label"]).sum())
    err_b = int((b["prediction"] != b["label"]).sum())
    z, p = two_proportion_test(err_a, n, err_b, n)
    decision, reason = _decide(p < alpha, err_b < err_a, inconclusive)
    numbers = progress | {
        "test": "two-proportion z-test (two-sided) on error rate",
        "error_rate_champion": err_a / n,
        "error_rate_challenger": err_b / n,
        "z": z,
        "p_value": p,
        "alpha": alpha,
    }
    return Verdict(Status.DECIDED, decision, reason, numbers)


def _analyse_shadow(frame: pd.DataFrame, n: int, alpha: float, inconclusive: str) -> Verdict:
    champion = _labelled(frame, CHAMPION_ROUTE)
    shadow = frame[frame["route"] == SHADOW_ROUTE][["request_id", "row", "prediction"]]
    pairs = champion.merge(shadow, on=["request_id", "row"], suffixes=("", "_shadow"))
    progress = {"sample_size": n, "labelled_pairs": len(pairs), "served_shadow": len(shadow)}
    if len(pairs) < n:
        return Verdict(Status.WAITING, None, "collecting the fixed sample of paired rows", progress)
    pairs = pairs.head(n)
    right_a = pairs["prediction"] == pairs["label"]
    right_b = pairs["prediction_shadow"] == pairs["label"]
    only_champion, only_challenger = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    discordant = only_champion + only_challenger
    p = float(stats.binomtest(only_challenger, discordant, 0.5).pvalue) if discordant else 1.0
    decision, reason = _decide(p < alpha, only_challenger > only_champion, inconclusive)
    numbers = progress | {
        "test": "exact McNemar test (paired, two-sided)",
        "error_rate_champion": float(1 - right_a.mean()),
        "error_rate_challenger": float(1 - right_b.mean()),
        "only_champion_right": only_champion,
        "only_challenger_right": only_challenger,
        "p_value": p,
        "alpha": alpha,
    }
    return Verdict(Status.DECIDED, decision, reason, numbers)
