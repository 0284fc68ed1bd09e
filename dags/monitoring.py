"""Monitoring: detect drift and decay in a window of traffic -> decide whether to retrain.

A retrain request is the ``<model>.retrain`` Asset event, with the report and the
drifted features in its extra; the ``training`` DAG is scheduled on it. The steps
live in ``pipelines.steps``; this file only wires them (``pipelines.pipeline.MONITORING``).
"""

from airflow.sdk import DAG, dag

from mlops_airflow.dag_settings import (
    every,
    example_end,
    form,
    model_assets,
    models,
    retrain_callbacks,
    timing,
)
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import MONITORING


def monitoring_dag(model: Model) -> DAG:
    """The monitoring DAG of one model of the catalogue."""
    config = model.config
    monitoring_config = config.monitoring
    _, retrain_requested = model_assets(config)

    @dag(
        dag_id=model.dag_id("monitoring"),
        schedule=every(monitoring_config.cron, config),  # each interval of traffic is judged once
        params=form(
            "monitoring", config,
            interval_end=("Window ends (exclusive)",
                          f"Judge the month before this date, e.g. {example_end(config, 1)}. "
                          "Empty: the run's interval."),
        ),
        max_active_runs=1,  # decisions read the last request: one at a time
        **timing(config),
        tags=["mlops", "monitoring", config.dataset.name],
        default_args=DEFAULT_ARGS,
        doc_md=(
            f"Monitor `{config.registry.model_name}`: drift of every feature, the prediction and the label"
            f" against the champion's training reference, and live {monitoring_config.performance.metric};"
            " on drift or decay, one retrain request (an Asset event) per episode."
        ),
    )  # fmt: skip
    def monitoring():
        outlets = {"decide_retrain": [retrain_requested]}
        pipeline_tasks(MONITORING, outlets=outlets, task_kwargs=retrain_callbacks(), model=model)

    return monitoring()


for model in models():  # one DAG per model of the catalogue (``monitoring__<model>``), or ``monitoring``
    monitoring_dag(model)
