"""The deploy DAG's human-in-the-loop approval: when a rollout waits for a person, and the audit of it.

A person approves in the Airflow UI when ``deploy.approval`` is on, or when the candidate's metric
swung wider than the gate's band; "Reject" skips the rollout.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pipelines.config import PipelineConfig
from pipelines.pipeline import approval_reason


def route_approval(always: bool, **context: Any) -> str:
    """``approve`` when config asks for approval or the candidate swung wider than the gate's band."""
    validated = context["ti"].xcom_pull(task_ids="validate_serving") or {}
    reason = approval_reason(always, {"validate_serving": validated})
    if reason is None:
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
        reason=reason,
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
