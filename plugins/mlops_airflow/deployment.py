"""What the deploy, rollback and batch-inference DAGs need from the pipeline config.

Read at DAG-parse time, so it only touches the YAML config (no ML library).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param

from mlops_airflow.notifiers import RetrainNotifier
from mlops_airflow.schedules import DataSpanTimetable
from mlops_airflow.training import interval_end_param, model_assets, time_schedules, timing
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
        **timing(config),
        "max_active_runs": 1,  # one rollout at a time: the registry holds one policy
        "params": deploy_params(config),
        "doc_md": (
            f"Deploy a `{config.registry.model_name}` challenger: infra validation in a sandbox, "
            f"{'human approval, ' if config.deploy.approval else ''}"
            f"rollout ({config.deploy.rollout.strategy}), verdict by a test fixed in advance, "
            "promote or abort."
        ),
    }


def route_approval(always: bool, **context: Any) -> str:
    """``approve`` when config asks for approval or the candidate swung wider than the gate's band."""
    validated = context["ti"].xcom_pull(task_ids="validate_serving") or {}
    reason = validated.get("approval_reason")
    if not (always or reason):
        return "start_rollout"
    from pipelines import audit
    from pipelines.settings import Settings

    dag_run = context["dag_run"]
    audit.record(
        Settings.from_env(),
        audit.APPROVAL_REQUESTED,
        model=validated.get("model_name"),
        run_key=f"{dag_run.dag_id}/{dag_run.run_id}",
        version=validated.get("version"),
        reason=reason or "deploy.approval is on: every rollout is approved by a person",
    )
    return "approve"


def record_approval(context: dict[str, Any]) -> None:
    """Audit the person's answer (the approval task's result names who answered)."""
    from pipelines import audit
    from pipelines.settings import Settings

    ti, dag_run = context["ti"], context["dag_run"]
    answer = ti.xcom_pull(task_ids="approve") or {}
    validated = ti.xcom_pull(task_ids="validate_serving") or {}
    approved = "Approve" in (answer.get("chosen_options") or [])
    user = answer.get("responded_by_user") or {}
    audit.record(
        Settings.from_env(),
        audit.APPROVED if approved else audit.REJECTED,
        model=validated.get("model_name"),
        run_key=f"{dag_run.dag_id}/{dag_run.run_id}",
        version=validated.get("version"),
        by=user.get("name") or user.get("id") if isinstance(user, dict) else str(user),
        answered_at=answer.get("responded_at"),
    )


def approval_gate(config: PipelineConfig, tasks: dict[str, Any]) -> None:
    """validate_serving -> route_approval -> [approve (a person, Airflow HITL)] -> start_rollout.

    The route goes through ``approve`` when ``deploy.approval`` is on, or when the candidate's
    metric swung wider than ``gate.swing_band`` (a tag set at registration); "Reject" skips the
    rollout. Otherwise the rollout starts at once.
    """
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from airflow.providers.standard.operators.python import BranchPythonOperator
    from airflow.task.trigger_rule import TriggerRule

    route = BranchPythonOperator(
        task_id="route_approval",
        python_callable=route_approval,
        op_kwargs={"always": config.deploy.approval},
        doc_md="Sends the rollout to a person when config asks or the metric swing is wide.",
        execution_timeout=timedelta(minutes=5),
    )
    approve = ApprovalOperator(
        task_id="approve",
        subject=f"Deploy {config.registry.model_name}: approve the rollout?",
        body=(
            "{{ ti.xcom_pull(task_ids='validate_serving')['approval_reason'] or 'deploy.approval is on' }}"
            "\n\nInfra validation passed: {{ ti.xcom_pull(task_ids='validate_serving') }}"
        ),
        ignore_downstream_trigger_rules=True,
        on_success_callback=record_approval,
        # no execution_timeout: it waits for a person, for as long as that takes
    )
    start = tasks["start_rollout"]
    tasks["validate_serving"] >> route >> [approve, start]
    approve >> start
    start.trigger_rule = TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS


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
        "schedule": _timetable(config.schedule.cron, config),
        **timing(config),
        "max_active_runs": 2,
        "params": {
            "interval_end": interval_end_param(
                "Score up to (exclusive)",
                "End of the interval to score, e.g. 2013-05-01. Empty: the run's data interval.",
            )
        },
        "doc_md": f"Score each data interval of {config.dataset.description} with the champion.",
    }


def _timetable(cron: str, config: PipelineConfig) -> DataSpanTimetable | None:
    return DataSpanTimetable.for_config(config, cron) if time_schedules() else None


def features_dag_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Daily intervals in the dataset's timezone: the online store is at most a day behind."""
    return {
        "schedule": _timetable("@daily", config),
        **timing(config),
        "max_active_runs": 1,  # runs rewrite the same offline tables: one at a time
        "params": {
            "interval_end": interval_end_param(
                "Materialize up to (exclusive)",
                "Load the day before this date into the online store. Empty: the run's interval.",
            )
        },
        "doc_md": (
            "Keep the feature store fresh: offline tables up to the interval's end, the interval "
            "materialized into the online store that the model server reads."
            if config.dataset.feature_store
            else "The dataset config declares no feature store: runs skip."
        ),
    }


def monitoring_dag_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Each ``monitoring.cron`` interval of traffic is judged once; by hand, the month before an end."""
    monitoring = config.monitoring
    return {
        "schedule": _timetable(monitoring.cron, config),
        **timing(config),
        "max_active_runs": 1,  # decisions read the last request: one at a time
        "params": {
            "interval_end": interval_end_param(
                "Window ends (exclusive)",
                "Judge the month before this date, e.g. 2013-05-01. Empty: the run's interval.",
            ),
            "source": Param(monitoring.source, enum=["prediction_log", "batch"], title="Rows to judge"),
            "drift_share": Param(
                monitoring.drift.share,
                type="number",
                exclusiveMinimum=0,
                maximum=1,
                title="Share of drifted features that makes the window drift",
            ),
        },
        "doc_md": (
            f"Monitor `{config.registry.model_name}`: drift of every feature, the prediction and the label"
            f" against the champion's training reference, and live {monitoring.performance.metric}; on"
            " drift or decay, one retrain request (an Asset event) per episode."
        ),
    }


def retrain_callbacks() -> dict[str, dict[str, Any]]:
    """The decide task notifies when it requests a retrain (it is skipped otherwise)."""
    return {"decide_retrain": {"on_success_callback": RetrainNotifier()}}
