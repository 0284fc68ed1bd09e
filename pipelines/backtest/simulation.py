"""One policy served month by month: the trigger, the gate, and the canary/shadow/direct rollout.

``simulate`` replays a policy with a strategy; ``oracle`` is the best live ROC AUC any policy
could have had in each month, against which months served by a worse model are counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss

from pipelines import gate, modeling, monitoring, rollout
from pipelines.backtest.policies import Policy, PolicyRun
from pipelines.backtest.replay import Model, Period, Replay, Strategy, _auc
from pipelines.config import PipelineConfig

HARM_MARGIN = 0.01  # an alarm predicted harm when the served model is this far below a fresh retrain


def _window_frame(period: Period, served: np.ndarray, versions: np.ndarray, target: str) -> pd.DataFrame:
    frame = period.frame.copy()
    frame[modeling.PREDICTION_COLUMN] = served
    frame[target] = period.y.astype(float)
    frame["model_version"], frame["route"] = versions, "champion"
    return frame.reset_index(drop=True)


def _rollout_verdict(
    config: PipelineConfig, y: np.ndarray, champion: np.ndarray, challenger: np.ndarray, thresholds: tuple
) -> str:
    """The online test at the end of the challenger's first month (pipelines.rollout's z-test)."""
    wrong_a = (champion >= thresholds[0]).astype(int) != y
    wrong_b = (challenger >= thresholds[1]).astype(int) != y
    return _error_rate_verdict(config, wrong_a, wrong_b)


def _error_rate_verdict(config: PipelineConfig, wrong_a: np.ndarray, wrong_b: np.ndarray) -> str:
    """promote / abort on a significant difference in error rate (the rollout's z-test), else the
    configured choice for an inconclusive test (also when an arm has no rows)."""
    if len(wrong_a) == 0 or len(wrong_b) == 0:
        return config.deploy.rollout.inconclusive
    _, p = rollout.two_proportion_test(int(wrong_a.sum()), len(wrong_a), int(wrong_b.sum()), len(wrong_b))
    if p < config.deploy.rollout.alpha:
        return "promote" if wrong_b.mean() < wrong_a.mean() else "abort"
    return config.deploy.rollout.inconclusive


def simulate(replay: Replay, policy: Policy, strategy: Strategy, oracle: list[float]) -> PolicyRun:
    """Serve every month under ``policy``; retrain with ``strategy``; gate and roll out as configured."""
    config, target = replay.config, replay.dataset.target.name
    periods = replay.periods
    run = PolicyRun(policy, strategy)
    champion = replay.fit(strategy, periods[0].start)
    challenger: Model | None = None
    baseline: dict[str, Any] | None = None
    last_request: dict[str, Any] | None = None
    rollout_kind = config.deploy.rollout.strategy
    share = config.deploy.rollout.share or 0.1
    arm = np.random.default_rng(config.training.random_state)
    for i, period in enumerate(periods):
        champ_p = replay.proba(champion, i)
        served, versions = champ_p.copy(), np.full(len(champ_p), "champion", dtype=object)
        verdict = None
        if challenger is not None:
            chall_p = replay.proba(challenger, i)
            canary = arm.random(len(champ_p)) < (0.0 if rollout_kind == "shadow" else share)
            served[canary], versions[canary] = chall_p[canary], "challenger"
            if rollout_kind == "shadow":  # both scored every row; the challenger answered nobody
                verdict = _rollout_verdict(
                    config, period.y, champ_p, chall_p, (champion.threshold, challenger.threshold)
                )
            else:
                verdict = _canary_test(config, period.y, canary, champ_p, chall_p, champion, challenger)
        live_auc = _auc(period.y, served)
        row: dict[str, Any] = {
            "month": period.name,
            "serving": _age(champion, periods),
            "live_auc": live_auc,
            "live_log_loss": float(log_loss(period.y, np.clip(served, 1e-6, 1 - 1e-6), labels=[0, 1])),
            "oracle_auc": oracle[i],
            "below_best": live_auc < oracle[i] - HARM_MARGIN,
            "rollout": verdict,
        }
        if challenger is not None:
            if verdict == "promote":  # from now on the challenger's rows are the champion's
                champion, baseline = challenger, None
                versions = np.where(versions == "challenger", "champion", "previous")
            challenger = None
        # the end of the month: does the trigger fire?
        alarm, reason, report = _trigger(replay, policy, champion, i, served, versions, baseline, target)
        if report is not None:
            assert policy.monitoring is not None  # only a monitor policy has a report (see _trigger)
            new_baseline = report["performance"].get("new_baseline")
            if new_baseline and baseline is None:
                baseline = {**new_baseline, "value": new_baseline["value"]}
            decision = monitoring.retrain_decision(
                report, last_request, policy.monitoring.retrain, window_end=period.end, run_id=f"m{i}"
            )
            retrain = decision["retrain"]
            if retrain:
                last_request = {
                    "requested_at": period.end.isoformat(), "champion_version": report["champion_version"],
                    "run_id": f"m{i}",
                }  # fmt: skip
            row |= {
                "estimated_auc": report["estimated"].get("roc_auc"),
                "weighted_drift": report["drift"].get("weighted_share"),
                "drift_share": report["drift"].get("share"),
            }
        else:
            retrain = alarm
        row |= {"alarm": alarm, "reason": reason}
        if i + 1 < len(periods):
            fresh = replay.fit(strategy, period.end, champion if strategy.mode == "stateful" else None)
            row["harm_next"] = replay.auc(champion, i + 1) < replay.auc(fresh, i + 1) - HARM_MARGIN
        if retrain and i + 1 < len(periods):
            champion, challenger, outcome = _retrain(replay, strategy, champion, period.end, run)
            row["retrain"] = outcome
        run.months.append(row)
    return run


def _canary_test(config, y, canary, champ_p, chall_p, champion: Model, challenger: Model) -> str:
    """Canary / A-B: the champion's arm against the challenger's arm, as the rollout analyses them."""
    wrong_a = (champ_p[~canary] >= champion.threshold).astype(int) != y[~canary]
    wrong_b = (chall_p[canary] >= challenger.threshold).astype(int) != y[canary]
    return _error_rate_verdict(config, wrong_a, wrong_b)


def _age(model: Model, periods: list[Period]) -> str:
    return f"fit to {model.until.tz_convert(periods[0].start.tz):%Y-%m-%d}"


def _trigger(
    replay: Replay,
    policy: Policy,
    champion: Model,
    i: int,
    served: np.ndarray,
    versions: np.ndarray,
    baseline: dict[str, Any] | None,
    target: str,
) -> tuple[bool, str, dict[str, Any] | None]:
    """(did the trigger fire, why, the monitoring report) at the end of month ``i``."""
    if policy.kind == "never":
        return False, "never retrains", None
    if policy.kind == "schedule":
        due = (i + 1) % policy.every == 0
        return due, f"schedule: every {policy.every} month(s){'' if due else ', not due'}", None
    window = _window_frame(replay.periods[i], served, versions, target)
    assert policy.monitoring is not None, f"policy {policy.name!r} monitors without a monitoring config"
    report = monitoring.detect(
        champion.reference, window, dataset=replay.dataset, config=policy.monitoring,
        champion_version="champion", training=champion.test, profile=champion.profile, baseline=baseline,
    )  # fmt: skip
    fired = monitoring.retrain_decision(
        report, None, policy.monitoring.retrain, window_end=replay.periods[i].end, run_id="probe"
    )
    alarm = bool(fired["retrain"] or fired.get("notify"))
    return alarm, fired["reason"] if alarm else "; ".join(monitoring.explain(report)), report


def _retrain(
    replay: Replay, strategy: Strategy, champion: Model, until: pd.Timestamp, run: PolicyRun
) -> tuple[Model, Model | None, str]:
    """Fit, gate against the champion on the candidate's test split, start the rollout."""
    config = replay.config
    candidate = replay.fit(strategy, until, champion if strategy.mode == "stateful" else None)
    run.retrains += 1
    run.fit_seconds += candidate.fit_seconds
    y = candidate.test_y
    new = modeling.classification_metrics(
        y, candidate.pipeline.predict_proba(candidate.test_x)[:, 1], candidate.threshold
    )
    old = modeling.classification_metrics(
        y, champion.pipeline.predict_proba(candidate.test_x)[:, 1], champion.threshold
    )
    decision = gate.decide(config.gate, new, old)
    if not decision["passed"]:
        return champion, None, f"rejected: {decision['reason']}"
    if config.deploy.rollout.strategy == "direct":
        return candidate, None, "promoted"
    return champion, candidate, f"{config.deploy.rollout.strategy} started"


def oracle(replay: Replay, strategies: list[Strategy]) -> list[float]:
    """For each month, the best live ROC AUC of any stateless fit on an earlier month boundary."""
    best = []
    for i in range(len(replay.periods)):
        scores = [
            replay.auc(replay.fit(Strategy(s.window_months), replay.periods[b].start), i)
            for s in strategies
            for b in range(i + 1)
        ]
        best.append(float(np.nanmax(scores)))
    return best
