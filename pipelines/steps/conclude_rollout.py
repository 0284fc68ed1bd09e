"""Conclude rollout: promote or abort as the test decided, and log the decision to MLflow."""

from __future__ import annotations

import logging
from typing import cast

from pipelines import audit, deploy, reports, storage, tracking
from pipelines.context import StepContext
from pipelines.results import ConcludeRolloutInputs, ConcludeRolloutResult, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: ConcludeRolloutInputs) -> ConcludeRolloutResult | Skipped:
    """Apply the verdict of ``analyse_rollout`` to the registry."""
    import mlflow

    name = ctx.config.registry.model_name
    started, verdict = inputs["start_rollout"], inputs["analyse_rollout"]
    version = str(started["version"])
    decision, reason = verdict.get("decision"), verdict.get("reason", "")
    if started.get("decided"):
        outcome = {"champion": version}  # direct: promoted when the rollout started
    elif decision == "promote":
        outcome = deploy.promote(ctx.settings, name, version, reason=reason, origin=audit.origin(ctx))
    elif decision == "abort":
        outcome = deploy.abort(ctx.settings, name, version, reason=reason, origin=audit.origin(ctx))
    else:
        outcome = {"note": reason}
    report_uri = storage.write_text(
        storage.join(ctx.artifact_dir("conclude_rollout"), "rollout.html"),
        reports.rollout_html(name, version, started, verdict),
    )
    numbers = {k: v for k, v in verdict.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    with tracking.pipeline_run(ctx, "conclude_rollout"):
        mlflow.set_tags(
            {"deploy.decision": str(decision), "deploy.reason": reason[:500], "deploy.version": version}
        )
        mlflow.log_metrics({f"rollout_{k}": float(v) for k, v in numbers.items()})
        mlflow.log_dict({"started": started, "verdict": verdict, "outcome": outcome}, "rollout/decision.json")
        mlflow.log_artifact(storage.local_path(report_uri) or _download(report_uri), "rollout")
    log.info("rollout of %s v%s: %s (%s)", name, version, decision, reason)
    return cast(
        ConcludeRolloutResult,
        {"model_name": name, "version": version, "decision": decision, "reason": reason,
         "report_uri": report_uri, **outcome},
    )  # fmt: skip


def _download(uri: str) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="mlops-rollout-") + "/rollout.html"
    with open(path, "wb") as fh:
        fh.write(storage.read_bytes(uri))
    return path
