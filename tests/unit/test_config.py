"""Config: the default loads, run parameters apply by name, mistakes are named."""

import pytest

from pipelines.config import RUN_PARAMETERS, load_config
from pipelines.errors import ConfigError
from pipelines.settings import DEFAULT_CONFIG


def test_default_config_is_the_flights_dataset():
    config = load_config(DEFAULT_CONFIG)
    assert config.dataset.name == "flights"
    assert config.dataset.key == ["carrier", "flight", "origin", "time_hour"]
    leaky = {"dep_delay", "dep_time", "arr_time", "air_time", "arr_delay"}
    assert not leaky & set(config.dataset.features.all)
    assert not leaky & set(config.dataset.columns)
    assert config.expectations_path.is_file()


def test_run_parameters_override_the_config():
    config = load_config(
        DEFAULT_CONFIG, {"estimator": "logistic_regression", "window_months": 2, "min_value": 0.7}
    )
    assert config.training.estimator == "logistic_regression"
    assert config.ingest.window_months == 2
    assert config.gate.min_value == 0.7
    assert set(RUN_PARAMETERS) >= {"window_months", "estimator", "search", "min_value", "max_drop"}


def test_unknown_run_parameter_is_named():
    with pytest.raises(ConfigError, match="unknown run parameter 'learning_rat'"):
        load_config(DEFAULT_CONFIG, {"learning_rat": 0.1})


def test_invalid_value_names_the_field():
    with pytest.raises(ConfigError, match=r"training.estimator"):
        load_config(DEFAULT_CONFIG, {"estimator": "xgboost"})
    with pytest.raises(ConfigError, match=r"ingest.window_months"):
        load_config(DEFAULT_CONFIG, {"window_months": 0})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_source_kind_needs_its_fields(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("kind: file", "kind: sql", 1)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"needs source\.url and source\.table"):
        load_config(path)


def test_naive_dates_are_read_in_the_dataset_timezone(store):
    from pipelines.context import StepContext
    from pipelines.steps.ingest import training_window

    ctx = StepContext.create(dag_id="d", run_id="r", interval_start="2013-03-01", interval_end="2013-04-01")
    assert ctx.interval_end.isoformat() == "2013-04-01T04:00:00+00:00"  # midnight in New York (EDT)
    start, end = training_window(ctx)
    assert start.isoformat() == "2013-01-01T05:00:00+00:00"  # midnight in New York (EST), across DST
    assert end == ctx.interval_end
