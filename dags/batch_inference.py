"""Batch inference: read the interval -> validate (same suite) -> score with the champion.

Monthly on the data interval, or by hand. See ``pipelines.pipeline.BATCH_INFERENCE``.
"""

from airflow.sdk import DAG, dag

from mlops_airflow.dag_settings import every, example_end, form, models, timing
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import BATCH_INFERENCE


def batch_inference_dag(model: Model) -> DAG:
    """The batch inference DAG of one model of the catalogue."""
    config = model.config

    @dag(
        dag_id=model.dag_id("batch_inference"),
        schedule=every(config.schedule.cron, config),  # the data intervals of training
        params=form(
            "batch_inference", config,
            interval_end=("Score up to (exclusive)",
                          f"End of the interval to score, e.g. {example_end(config, 1)}. "
                          "Empty: the run's data interval."),
        ),
        max_active_runs=2,
        **timing(config),
        tags=["mlops", "inference", config.dataset.name],
        default_args=DEFAULT_ARGS,
        doc_md=f"Score each data interval of {config.dataset.description} with the champion.",
    )  # fmt: skip
    def batch_inference():
        pipeline_tasks(BATCH_INFERENCE, model=model)

    return batch_inference()


for model in models():  # one DAG per model of the catalogue (``batch_inference__<model>``), or plain
    batch_inference_dag(model)
