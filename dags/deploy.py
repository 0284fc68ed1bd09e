"""Deploy: infra validation -> [human approval] -> rollout -> verdict (sensor) -> promote or abort.

Runs when training registers a challenger (an asset event), or by hand with a
version and strategy from the params form. The steps live in
``pipelines.steps``; this file only wires them (see ``pipelines.pipeline.DEPLOY``).
"""

from airflow.sdk import DAG, dag

from mlops_airflow.approval import approval_gate
from mlops_airflow.dag_settings import form, models, on_challenger, rollout_sensor, timing
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import DEPLOY


def deploy_dag(model: Model) -> DAG:
    """The deploy DAG of one model of the catalogue."""
    config = model.config
    rollout = config.deploy.rollout

    @dag(
        dag_id=model.dag_id("deploy"),
        schedule=on_challenger(config),
        params=form("deploy", config),
        max_active_runs=1,  # one rollout at a time: the registry holds one policy
        **timing(config),
        tags=["mlops", "deploy", config.dataset.name],
        default_args=DEFAULT_ARGS,
        doc_md=(
            f"Deploy a `{config.registry.model_name}` challenger: infra validation in a sandbox, "
            f"{'human approval, ' if config.deploy.approval else ''}rollout ({rollout.strategy}), "
            "verdict by a test fixed in advance, promote or abort."
        ),
    )
    def deploy():
        tasks = pipeline_tasks(DEPLOY, sensors=rollout_sensor(config), model=model)
        # A person approves in the Airflow UI when config asks, or when the candidate's metric swung
        # wider than the gate's band; "Reject" skips the rollout.
        approval_gate(config, tasks)

    return deploy()


for model in models():  # one DAG per model of the catalogue (``deploy__<model>``), or ``deploy``
    deploy_dag(model)
