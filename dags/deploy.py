"""Deploy: infra validation -> [human approval] -> rollout -> verdict (sensor) -> promote or abort.

Runs when training registers a challenger (an asset event), or by hand with a
version and strategy from the params form. The steps live in
``pipelines.steps``; this file only wires them (see ``pipelines.pipeline.DEPLOY``).
"""

from airflow.sdk import dag

from mlops_airflow.deployment import approval_gate, deploy_dag_kwargs, rollout_sensor
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import pipeline_config
from pipelines.pipeline import DEPLOY

config = pipeline_config()


@dag(dag_id="deploy", tags=["mlops", "deploy", config.dataset.name], default_args=DEFAULT_ARGS,
     **deploy_dag_kwargs(config))  # fmt: skip
def deploy():
    tasks = pipeline_tasks(DEPLOY, sensors=rollout_sensor(config))
    # A person approves in the Airflow UI when config asks, or when the candidate's metric swung
    # wider than the gate's band; "Reject" skips the rollout.
    approval_gate(config, tasks)


deploy()
