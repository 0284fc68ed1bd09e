"""Analyse rollout: has the fixed sample been collected, and what does the test say?

Polled by a sensor. Reads the prediction log joined with feedback labels for
this rollout only. Returns ``status: waiting`` with progress until both arms
have the sample size fixed at the start, then the verdict. A rollout that runs
past ``max_wait_hours`` is decided as abort: traffic goes back to the champion.
"""

from __future__ import annotations

import logging
from typing import cast

import pandas as pd

from pipelines import deploy, prediction_log, rollout
from pipelines.context import StepContext
from pipelines.pipeline import Status
from pipelines.results import AnalyseRolloutInputs, AnalyseRolloutResult, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: AnalyseRolloutInputs) -> AnalyseRolloutResult | Skipped:
    """The verdict, or progress towards it."""
    started = inputs["start_rollout"]
    if started.get("decided"):
        return {"status": Status.DECIDED, "decision": started["decision"], "reason": started["reason"]}
    name = ctx.config.registry.model_name
    policy = deploy.current_policy(ctx.settings, name)
    expected = started["policy"]["rollout_id"]
    if policy.rollout_id != expected:
        return {
            "status": Status.DECIDED,
            "decision": "ended",
            "reason": f"rollout {expected} was ended elsewhere",
        }
    store = prediction_log.open_log(ctx.settings, name, writer=False)
    try:
        # this rollout's rows, and labels from its start on: each poke reads the rollout, not the history
        predictions = store.read(start=policy.started_at, rollout_id=policy.rollout_id)
        frame = prediction_log.with_feedback(predictions, store.read_feedback(since=policy.started_at))
    finally:
        store.close()
    verdict = rollout.analyse(frame, policy, ctx.config.deploy.rollout.inconclusive)
    if verdict.status == Status.WAITING:
        age_h = (pd.Timestamp.now(tz="UTC") - pd.Timestamp(policy.started_at)).total_seconds() / 3600
        if age_h > ctx.config.deploy.rollout.max_wait_hours:
            reason = f"the sample was not complete after {age_h:.1f} h (max_wait_hours)"
            return cast(
                AnalyseRolloutResult,
                {"status": Status.DECIDED, "decision": "abort", "reason": reason, **verdict.numbers},
            )
        log.info("rollout %s waiting: %s", policy.rollout_id, verdict.numbers)
    return cast(
        AnalyseRolloutResult,
        {"rollout_id": policy.rollout_id, "version": policy.challenger_version, **verdict.to_dict()},
    )
