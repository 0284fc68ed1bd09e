"""Rollback: move the champion alias back to the previous version (manual trigger only)."""

from airflow.sdk import DAG, dag

from mlops_airflow.dag_settings import models, timing
from mlops_airflow.step_tasks import pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import ROLLBACK


def rollback_dag(model: Model) -> DAG:
    """The rollback DAG of one model of the catalogue."""
    config = model.config

    @dag(
        dag_id=model.dag_id("rollback"),
        tags=["mlops", "deploy", config.dataset.name],
        schedule=None,
        **timing(config),
        max_active_runs=1,
        default_args={"retries": 1},
        doc_md=f"Move `{config.registry.model_name}@champion` back to `@previous`; servers follow in a poll.",
    )
    def rollback():
        pipeline_tasks(ROLLBACK, model=model)

    return rollback()


for model in models():  # one DAG per model of the catalogue (``rollback__<model>``), or ``rollback``
    rollback_dag(model)
