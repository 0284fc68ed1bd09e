"""Decide retrain: turn a monitoring report into one retrain request per drift episode.

A request is the step's result with ``retrain: true`` and the extra of the
retrain Asset event (report URI, drifted features, the window's end, which
becomes the training window's end). Otherwise the step is skipped and no event
is emitted. The last request is kept as a tag on the registered model, so the
cooldown holds across runs, and across the embedded and production profiles.
"""

from __future__ import annotations

import json
import logging

import pandas as pd

from pipelines import audit, monitoring, notify, tracking
from pipelines.context import StepContext
from pipelines.pipeline import skipped
from pipelines.results import DecideRetrainInputs, DecideRetrainResult, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: DecideRetrainInputs) -> DecideRetrainResult | Skipped:
    """Apply the retrain policy (triggers, cooldown) to the report of ``detect_drift``."""
    found = inputs["detect_drift"]
    name = ctx.config.registry.model_name
    client = tracking.client(ctx.settings)
    last = monitoring.last_request(client.get_registered_model(name).tags)
    window_end = pd.Timestamp(found["window"]["end"])
    new_baseline = (found.get("performance") or {}).get("new_baseline")
    if new_baseline:  # the first window the champion answered most of: what later ones are compared with
        baseline = {**new_baseline, "window_end": window_end.isoformat(), "run_id": ctx.run_id}
        client.set_model_version_tag(
            name, found["champion_version"], monitoring.BASELINE_TAG, json.dumps(baseline)
        )
    decision = monitoring.retrain_decision(
        found, last, ctx.config.monitoring.retrain, window_end=window_end, run_id=ctx.run_id
    )
    if decision.get("notify"):  # notify mode: people hear it, nothing is requested
        notify.post(notify.retrain_message({**found, **decision}))
    if not decision["retrain"]:
        log.info("no retrain: %s", decision["reason"])
        return skipped(decision["reason"], retrain=False, notify=bool(decision.get("notify")))
    request = {
        "requested_at": window_end.isoformat(),
        "champion_version": found["champion_version"],
        "run_id": ctx.run_id,
        "report_uri": found["report_uri"],
        "features": found["drift"]["drifted_features"],
    }
    client.set_registered_model_tag(name, monitoring.RETRAIN_TAG, json.dumps(request))
    audit.record_step(
        ctx, audit.RETRAIN_REQUESTED, key=found["report_uri"], version=found["champion_version"],
        reason=decision["reason"], report_uri=found["report_uri"],
        drifted_features=found["drift"]["drifted_features"],
    )  # fmt: skip
    log.info("retrain requested for %s v%s: %s", name, found["champion_version"], decision["reason"])
    return {
        "retrain": True,
        "reason": decision["reason"],
        "model_name": name,
        "champion_version": found["champion_version"],
        "report_uri": found["report_uri"],
        "html_uri": found["html_uri"],
        # the extra of the retrain Asset event: training reads interval_end from it
        "event_extra": {
            "source": "monitoring",
            "interval_end": window_end.isoformat(),
            "report_uri": found["report_uri"],
            "drifted_features": found["drift"]["drifted_features"],
            "drift_share": found["drift"]["share"],
            "performance": found["performance"],
            "champion_version": found["champion_version"],
            "monitoring_run_id": ctx.run_id,
        },
    }
