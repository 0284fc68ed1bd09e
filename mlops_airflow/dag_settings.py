"""What every DAG file reads from the pipeline config at parse time: schedules, forms, assets.

Each DAG file shows its own ``schedule=``, ``params=`` and ``max_active_runs=``; the values come
from here. Only the YAML config is read (no ML library): parsing stays fast.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, Param

from mlops_airflow.notifiers import RetrainNotifier
from mlops_airflow.schedules import DataSpanTimetable, dag_start
from pipelines import run_parameters, util
from pipelines.catalogue import Model, load_catalogue
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.settings import Settings


def models() -> list[Model]:
    """The models each DAG file builds its DAGs for: the catalogue's loaded configs.

    With ``MLOPS_CONFIG_DIR`` that is every config of the folder (ids ``<dag>__<model>``); without,
    the one config of ``MLOPS_CONFIG`` (plain ids). Configs that do not load, or a folder that does
    not exist, give no DAG here: ``dags/catalogue.py`` reports them as its import error instead, so
    that one model's bad file never stops the other models' DAGs.
    """
    try:
        return [model for model in load_catalogue() if model.config is not None]
    except ConfigError:
        return []


def raise_catalogue_errors() -> None:
    """Raise one error naming every model whose config does not load, with its validation message."""
    try:
        broken = [model for model in load_catalogue() if model.error]
    except ConfigError as exc:
        raise CatalogueError(str(exc)) from None
    if broken:
        lines = [f"{model.path}: {model.error}" for model in broken]
        raise CatalogueError(
            f"{len(broken)} model config(s) of the catalogue do not load; their DAGs are left out, "
            "the other models' DAGs are unaffected:\n" + "\n".join(lines)
        )


class CatalogueError(Exception):
    """One or more configs of the model catalogue are invalid (shown as an import error)."""


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


def timing(config: PipelineConfig) -> dict[str, Any]:
    """``start_date`` and ``catchup`` of every DAG; none has an ``end_date`` (see ``schedules``)."""
    return {"start_date": dag_start(config), "catchup": False}


def retrain_or_monthly(config: PipelineConfig) -> AssetOrTimeSchedule | list[Asset]:
    """Monthly data intervals in the dataset's timezone, or a retrain asset event, whichever comes."""
    retrain = model_assets(config)[1]
    if not time_schedules():
        return [retrain]
    return AssetOrTimeSchedule(timetable=DataSpanTimetable.for_config(config), assets=[retrain])


def on_challenger(config: PipelineConfig) -> list[Asset]:
    """The ``challenger`` asset that training's register step emits."""
    return [model_assets(config)[0]]


def every(cron: str, config: PipelineConfig) -> DataSpanTimetable | None:
    """Data intervals of ``cron`` in the dataset's timezone (None when time schedules are off)."""
    return DataSpanTimetable.for_config(config, cron) if time_schedules() else None


def form(
    dag_id: str, config: PipelineConfig, interval_end: tuple[str, str] | None = None
) -> dict[str, Param]:
    """The manual-trigger form of ``dag_id``: the interval's end (when given), then its run parameters.

    Each parameter's type, choices and bounds come from the config schema and its default from
    the config (``pipelines.run_parameters``); ``interval_end`` is the field's (title, description).
    """
    params = {}
    if interval_end is not None:
        title, description = interval_end
        params["interval_end"] = Param(
            None, type=["null", "string"], format="date", title=title, description=description
        )
    for parameter in run_parameters.for_dag(dag_id):
        schema = run_parameters.field_schema(PipelineConfig, parameter.path)
        if parameter.description:
            schema["description"] = parameter.description
        params[parameter.name] = Param(
            run_parameters.default_of(parameter, config), title=parameter.title, **schema
        )
    return params


def example_end(config: PipelineConfig, months_later: int = 0) -> str:
    """A date to show in a form's help: three months into the data (where the demo's first champion
    ends), plus ``months_later``.

    ``2013-04-01`` for flights, ``2019-02-01`` for the car loans: each model's form shows a date its
    own data has, never another dataset's.
    """
    return f"{util.add_months(config.schedule.start_date, 3 + months_later)}-01"


def rollout_sensor(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Poke interval and timeout of the rollout sensor (the step itself aborts at max_wait_hours)."""
    rollout = config.deploy.rollout
    timeout = timedelta(hours=rollout.max_wait_hours) + timedelta(hours=1)
    return {
        "analyse_rollout": {"poke_seconds": rollout.poke_seconds, "timeout_seconds": timeout.total_seconds()}
    }


def retrain_callbacks() -> dict[str, dict[str, Any]]:
    """The decide task notifies when it requests a retrain (it is skipped otherwise)."""
    return {"decide_retrain": {"on_success_callback": RetrainNotifier()}}
