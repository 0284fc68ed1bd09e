"""Deploy: infra validation -> [approval] -> rollout -> verdict (sensor) -> promote or abort.

Runs when training registers a challenger (an asset event), or by hand with a
version and strategy from the params form. The steps live in
``pipelines.steps``; this file only wires them (see ``pipelines.pipeline.DEPLOY``).
"""

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import dag

from mlops_airflow.deployment import deploy_dag_kwargs, rollout_sensor
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import pipeline_config
from pipelines.pipeline import DEPLOY

config = pipeline_config()


@dag(dag_id="deploy", tags=["mlops", "deploy", config.dataset.name], default_args=DEFAULT_ARGS,
     **deploy_dag_kwargs(config))  # fmt: skip
def deploy():
    tasks = pipeline_tasks(DEPLOY, sensors=rollout_sensor(config))
    if config.deploy.approval:  # a person answers in the Airflow UI; "Reject" skips the rollout
        approve = ApprovalOperator(
            task_id="approve",
            subject=f"Deploy {config.registry.model_name}: approve the rollout?",
            body="Infra validation passed: {{ ti.xcom_pull(task_ids='validate_serving') }}",
            ignore_downstream_trigger_rules=True,
            retries=0,
        )
        tasks["validate_serving"] >> approve >> tasks["start_rollout"]


deploy()
