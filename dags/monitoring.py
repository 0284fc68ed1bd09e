"""Monitoring: detect drift and decay in a window of traffic -> decide whether to retrain.

A retrain request is the ``<model>.retrain`` Asset event, with the report and the
drifted features in its extra; the ``training`` DAG is scheduled on it. The steps
live in ``pipelines.steps``; this file only wires them (``pipelines.pipeline.MONITORING``).
"""

from airflow.sdk import dag

from mlops_airflow.deployment import monitoring_dag_kwargs, retrain_callbacks
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import model_assets, pipeline_config
from pipelines.pipeline import MONITORING

config = pipeline_config()
_, retrain_requested = model_assets(config)


@dag(
    dag_id="monitoring",
    tags=["mlops", "monitoring", config.dataset.name],
    default_args=DEFAULT_ARGS,
    **monitoring_dag_kwargs(config),
)
def monitoring():
    outlets = {"decide_retrain": [retrain_requested]}
    pipeline_tasks(MONITORING, outlets=outlets, task_kwargs=retrain_callbacks())


monitoring()
