"""Rollback: the ``champion`` alias goes back to the ``previous`` version, any rollout ends."""

from __future__ import annotations

from typing import Any

from pipelines import audit, deploy, tracking
from pipelines.context import StepContext


def run(ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
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
    return result
