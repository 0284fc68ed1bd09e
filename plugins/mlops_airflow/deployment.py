"""What the deploy, rollback and batch-inference DAGs need from the pipeline config.

Read at DAG-parse time, so it only touches the YAML config (no ML library).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import CronDataIntervalTimetable, Param

from mlops_airflow.training import local_date, model_assets
from pipelines.config import PipelineConfig


def deploy_params(config: PipelineConfig) -> dict[str, Param]:
    """The manual-trigger form of the deploy DAG; defaults are the config's values."""
    rollout = config.deploy.rollout
    return {
        "version": Param(
            None,
            type=["null", "string"],
            title="Model version",
            description="Registered version to deploy. Empty: the version behind the challenger alias.",
        ),
        "strategy": Param(
            rollout.strategy, enum=["direct", "canary", "shadow", "ab"], title="Rollout strategy"
        ),
        "share": Param(
            rollout.effective_share,
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
            title="Challenger's share of traffic (canary, A/B)",
        ),
        "min_detectable_effect": Param(
            rollout.min_detectable_effect,
            type="number",
            exclusiveMinimum=0,
            maximum=0.5,
            title="Smallest change in error rate to detect",
            description="Sets the sample size of the rollout test, fixed before traffic moves.",
        ),
    }


def deploy_dag_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Scheduled on the ``challenger`` asset that training's register step emits."""
    challenger, _ = model_assets(config)
    return {
        "schedule": [challenger],
        "start_date": local_date(config.schedule.start_date, config),
        "catchup": False,
        "max_active_runs": 1,  # one rollout at a time: the registry holds one policy
        "params": deploy_params(config),
        "doc_md": (
            f"Deploy a `{config.registry.model_name}` challenger: infra validation in a sandbox, "
            f"{'human approval, ' if config.deploy.approval else ''}"
            f"rollout ({config.deploy.rollout.strategy}), verdict by a test fixed in advance, "
            "promote or abort."
        ),
    }


def rollout_sensor(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Poke interval and timeout of the rollout sensor (the step itself aborts at max_wait_hours)."""
    rollout = config.deploy.rollout
    timeout = timedelta(hours=rollout.max_wait_hours) + timedelta(hours=1)
    return {
        "analyse_rollout": {"poke_seconds": rollout.poke_seconds, "timeout_seconds": timeout.total_seconds()}
    }


def batch_dag_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Monthly data intervals in the dataset's timezone, like training."""
    return {
        "schedule": CronDataIntervalTimetable(config.schedule.cron, timezone=config.schedule.timezone),
        "start_date": local_date(config.schedule.start_date, config),
        "end_date": local_date(config.schedule.end_date, config),
        "catchup": False,
        "max_active_runs": 2,
        "params": {
            "interval_end": Param(
                None,
                type=["null", "string"],
                format="date",
                title="Score up to (exclusive)",
                description="End of the interval to score, e.g. 2013-05-01. Empty: the run's data interval.",
            )
        },
        "doc_md": f"Score each data interval of {config.dataset.description} with the champion.",
    }
