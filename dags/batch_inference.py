"""Batch inference: read the interval -> validate (same suite) -> score with the champion.

Monthly on the data interval, or by hand. See ``pipelines.pipeline.BATCH_INFERENCE``.
"""

from airflow.sdk import dag

from mlops_airflow.deployment import batch_dag_kwargs
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import pipeline_config
from pipelines.pipeline import BATCH_INFERENCE

config = pipeline_config()


@dag(
    dag_id="batch_inference",
    tags=["mlops", "inference", config.dataset.name],
    default_args=DEFAULT_ARGS,
    **batch_dag_kwargs(config),
)
def batch_inference():
    pipeline_tasks(BATCH_INFERENCE)


batch_inference()
