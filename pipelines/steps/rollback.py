"""Rollback: the ``champion`` alias goes back to the ``previous`` version, any rollout ends."""

from __future__ import annotations

from typing import cast

from pipelines import audit, deploy, tracking
from pipelines.context import StepContext
from pipelines.results import NoInputs, RollbackResult, Skipped


def run(ctx: StepContext, inputs: NoInputs) -> RollbackResult | Skipped:
    """One registry move; servers follow on their next poll."""
    import mlflow

    result = deploy.rollback(
        ctx.settings,
        ctx.config.registry.model_name,
        reason=f"{ctx.run_type} run {ctx.run_id}",
        origin=audit.origin(ctx),
    )
    with tracking.pipeline_run(ctx, "rollback"):
        mlflow.set_tags({"deploy.decision": "rollback", "deploy.champion": result["champion"]})
    return cast(RollbackResult, result)
