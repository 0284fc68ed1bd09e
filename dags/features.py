"""Features: keep the feature store fresh, so the model server completes requests from it.

Each run brings the offline tables up to its interval's end and loads the interval into the
online store (``pipelines.steps.materialize_features``). With no ``feature_store`` in the
dataset config the step skips. This file only wires it (``pipelines.pipeline.FEATURES``).
"""

from airflow.sdk import dag

from mlops_airflow.dag_settings import every, form, pipeline_config, timing
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.pipeline import FEATURES

config = pipeline_config()


@dag(
    dag_id="features",
    schedule=every("@daily", config),  # the online store is at most a day behind
    params=form(
        "features", config,
        interval_end=("Materialize up to (exclusive)",
                      "Load the day before this date into the online store. Empty: the run's interval."),
    ),
    max_active_runs=1,  # runs rewrite the same offline tables: one at a time
    **timing(config),
    tags=["mlops", "features", config.dataset.name],
    default_args=DEFAULT_ARGS,
    doc_md=(
        "Keep the feature store fresh: offline tables up to the interval's end, the interval "
        "materialized into the online store that the model server reads."
        if config.dataset.feature_store
        else "The dataset config declares no feature store: runs skip."
    ),
)  # fmt: skip
def features():
    pipeline_tasks(FEATURES)


features()
