"""Features: keep the feature store fresh, so the model server completes requests from it.

Each run brings the offline tables up to its interval's end and loads the interval into the
online store (``pipelines.steps.materialize_features``). With no ``feature_store`` in the
dataset config the step skips. This file only wires it (``pipelines.pipeline.FEATURES``).
"""

from airflow.sdk import DAG, dag

from mlops_airflow.dag_settings import every, form, models, timing
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import FEATURES


def features_dag(model: Model) -> DAG:
    """The features DAG of one model of the catalogue."""
    config = model.config

    @dag(
        dag_id=model.dag_id("features"),
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
        pipeline_tasks(FEATURES, model=model)

    return features()


for model in models():  # one DAG per model of the catalogue (``features__<model>``), or ``features``
    features_dag(model)
