"""Features: keep the feature store fresh, so the model server completes requests from it.

Each run brings the offline tables up to its interval's end and loads the interval into the
online store (``pipelines.steps.materialize_features``). With no ``feature_store`` in the
dataset config the step skips. This file only wires it (``pipelines.pipeline.FEATURES``).
"""

from airflow.sdk import dag

from mlops_airflow.deployment import features_dag_kwargs
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import pipeline_config
from pipelines.pipeline import FEATURES

config = pipeline_config()


@dag(dag_id="features", tags=["mlops", "features", config.dataset.name], default_args=DEFAULT_ARGS,
     **features_dag_kwargs(config))  # fmt: skip
def features():
    pipeline_tasks(FEATURES)


features()
