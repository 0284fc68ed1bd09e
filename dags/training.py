"""Training: ingest -> validate -> train -> evaluate -> register.

Runs monthly on the data interval, on a retrain asset event, or by hand from
the params form. The steps live in ``pipelines.steps``; this file only wires
them (see ``pipelines.pipeline.TRAINING``).
"""

from airflow.sdk import dag

from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from mlops_airflow.training import dag_kwargs, model_assets, pipeline_config
from pipelines.pipeline import TRAINING

config = pipeline_config()
challenger_registered, _ = model_assets(config)


@dag(
    dag_id="training",
    tags=["mlops", "training", config.dataset.name],
    default_args=DEFAULT_ARGS,
    **dag_kwargs(config),
)
def training():
    pipeline_tasks(TRAINING, outlets={"register": [challenger_registered]})


training()
