"""Training: ingest -> validate -> train -> evaluate -> register.

Runs monthly on the data interval, on a retrain asset event, or by hand from
the params form. The steps live in ``pipelines.steps``; this file only wires
them (see ``pipelines.pipeline.TRAINING``).
"""

from airflow.sdk import DAG, dag

from mlops_airflow.dag_settings import example_end, form, model_assets, models, retrain_or_monthly, timing
from mlops_airflow.step_tasks import DEFAULT_ARGS, pipeline_tasks
from pipelines.catalogue import Model
from pipelines.pipeline import TRAINING


def training_dag(model: Model) -> DAG:
    """The training DAG of one model of the catalogue."""
    config = model.config
    challenger_registered, _ = model_assets(config)

    @dag(
        dag_id=model.dag_id("training"),
        schedule=retrain_or_monthly(config),
        params=form(
            "training", config,
            interval_end=("Train up to (exclusive)",
                          f"End of the training window, e.g. {example_end(config)}. "
                          "Empty: the run's data interval."),
        ),
        max_active_runs=1,
        **timing(config),
        tags=["mlops", "training", config.dataset.name],
        default_args=DEFAULT_ARGS,
        doc_md=f"Train `{config.registry.model_name}` on {config.dataset.description}.",
    )  # fmt: skip
    def training():
        pipeline_tasks(TRAINING, outlets={"register": [challenger_registered]}, model=model)

    return training()


for model in models():  # one DAG per model of the catalogue (``training__<model>``), or ``training``
    training_dag(model)
