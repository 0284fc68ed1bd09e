"""Start rollout: put the validated candidate into traffic by the configured strategy.

``direct`` (and the very first champion) is a blue-green switch: the
``champion`` alias moves at once. ``canary``, ``ab`` and ``shadow`` write the
deployment policy, with the sample size of the test fixed now, before any
traffic moves; the servers pick it up on their next registry poll.
"""

from __future__ import annotations

from typing import cast

from pipelines import audit, deploy, tracking
from pipelines.context import StepContext
from pipelines.pipeline import skipped
from pipelines.results import Skipped, StartRolloutInputs, StartRolloutResult


def run(ctx: StepContext, inputs: StartRolloutInputs) -> StartRolloutResult | Skipped:
    """Write the policy (or promote directly) for the version infra validation passed."""
    import mlflow

    name = ctx.config.registry.model_name
    version = str(inputs["validate_serving"]["version"])
    current = deploy.aliases(ctx.settings, name)
    if current.get(tracking.CHAMPION) == version:
        return skipped(f"v{version} is already the champion", version=version)
    policy = deploy.current_policy(ctx.settings, name)
    if policy.in_rollout and policy.challenger_version != version:
        # A newer candidate replaces an unfinished rollout: end the old one first, on the record.
        deploy.abort(
            # a rollout's policy always names its challenger (Policy.__post_init__ checks it)
            ctx.settings, name, cast(str, policy.challenger_version), reason=f"superseded by v{version}",
            origin=audit.origin(ctx),
        )  # fmt: skip
    started = deploy.start_rollout(ctx.settings, name, version, ctx.config.deploy.rollout, audit.origin(ctx))
    with tracking.pipeline_run(ctx, "start_rollout"):
        mlflow.set_tags({"deploy.version": version, "deploy.strategy": started["strategy"]})
        if started.get("policy"):
            mlflow.log_dict(started["policy"], "rollout/policy.json")
            mlflow.log_param("rollout.sample_size", started["policy"]["sample_size"])
    return cast(StartRolloutResult, {"model_name": name, "version": version, **started})
