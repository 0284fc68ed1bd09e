"""Rollback: move the champion alias back to the previous version (manual trigger only)."""

from airflow.sdk import dag

from mlops_airflow.dag_settings import pipeline_config, timing
from mlops_airflow.step_tasks import pipeline_tasks
from pipelines.pipeline import ROLLBACK

config = pipeline_config()


@dag(
    dag_id="rollback",
    tags=["mlops", "deploy", config.dataset.name],
    schedule=None,
    **timing(config),
    max_active_runs=1,
    default_args={"retries": 1},
    doc_md=f"Move `{config.registry.model_name}@champion` back to `@previous`; servers follow within a poll.",
)
def rollback():
    pipeline_tasks(ROLLBACK)


rollback()
