"""What the training DAG needs from the pipeline config: schedule, params form, assets.

Read at DAG-parse time, so it only touches the YAML config (no ML library).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, Param

from mlops_airflow.schedules import DataSpanTimetable, dag_start
from pipelines.config import PipelineConfig, load_config
from pipelines.settings import Settings


def pipeline_config() -> PipelineConfig:
    return load_config(Settings.from_env().config_path)


def model_assets(config: PipelineConfig) -> tuple[Asset, Asset]:
    """(challenger registered, retrain requested) assets of the configured model."""
    name = config.registry.model_name
    return (
        Asset(name=f"{name}.challenger", uri=f"mlops://registry/{name}/challenger"),
        Asset(name=f"{name}.retrain", uri=f"mlops://registry/{name}/retrain"),
    )


def time_schedules() -> bool:
    """False when ``MLOPS_TIME_SCHEDULES=off``: only asset events and manual triggers start runs."""
    return Settings.from_env().time_schedules


def schedule(config: PipelineConfig) -> AssetOrTimeSchedule | list[Asset]:
    """Monthly data intervals in the dataset's timezone, or a retrain asset event, whichever comes."""
    retrain = model_assets(config)[1]
    if not time_schedules():
        return [retrain]
    return AssetOrTimeSchedule(timetable=DataSpanTimetable.for_config(config), assets=[retrain])


def timing(config: PipelineConfig) -> dict[str, Any]:
    """``start_date`` and ``catchup`` of every DAG; none has an ``end_date`` (see ``schedules``)."""
    return {"start_date": dag_start(config), "catchup": False}


def interval_end_param(title: str, description: str) -> Param:
    """The optional date a manual run ends its data interval at (exclusive), in every DAG's form."""
    return Param(None, type=["null", "string"], format="date", title=title, description=description)


def params_form(config: PipelineConfig) -> dict[str, Param]:
    """The manual-trigger form; defaults are the config's values."""
    return {
        "interval_end": interval_end_param(
            "Train up to (exclusive)",
            "End of the training window, e.g. 2013-04-01. Empty: the run's data interval.",
        ),
        "window_months": Param(
            config.ingest.window_months, type="integer", minimum=1, maximum=120, title="Window (months)"
        ),
        "estimator": Param(
            config.training.estimator,
            enum=["hist_gradient_boosting", "logistic_regression"],
            title="Estimator",
        ),
        "search": Param(config.training.search.enabled, type="boolean", title="Hyperparameter search"),
        "min_value": Param(
            config.gate.min_value,
            type="number",
            minimum=-100,
            maximum=100,
            title=f"Gate: minimum {config.gate.metric}",
        ),
        "max_drop": Param(
            config.gate.max_drop,
            type="number",
            minimum=0,
            maximum=100,
            title="Gate: largest allowed drop vs champion",
        ),
        "training_mode": Param(
            config.training.mode,
            enum=["stateless", "stateful"],
            title="Continual training",
            description="stateless: from scratch on the window; stateful: continue the champion on it.",
        ),
        "shuffle_labels": Param(
            False,
            type="boolean",
            title="Sanity check: shuffle labels",
            description="Train on permuted labels; the gate must reject such a model.",
        ),
    }


def dag_kwargs(config: PipelineConfig) -> dict[str, Any]:
    """Common DAG arguments derived from the config."""
    return {
        "schedule": schedule(config),
        **timing(config),
        "max_active_runs": 1,
        "params": params_form(config),
        "doc_md": f"Train `{config.registry.model_name}` on {config.dataset.description}.",
    }
