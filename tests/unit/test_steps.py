"""Each step on a slice of the real flights data, with a real MLflow (SQLite) store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import dataset_config
from pipelines import modeling, storage, tracking
from pipelines.context import StepContext
from pipelines.errors import ConfigError, DataError, ValidationFailed
from pipelines.pipeline import TRAINING
from pipelines.runner import execute_step, run_pipeline
from pipelines.settings import Settings

LEAKY = {"dep_delay", "dep_time", "arr_time", "air_time", "arr_delay"}


@pytest.fixture
def sliced(store, tmp_path, flights_frame, monkeypatch):
    """Every 4th flight of Jan-Mar 2013 as a Parquet file, and a dataset config pointing at it."""
    path = tmp_path / "flights_slice.parquet"
    flights_frame.iloc[::4].to_parquet(path)
    monkeypatch.setenv("MLOPS_CONFIG", str(dataset_config(tmp_path, str(path))))
    return flights_frame.iloc[::4]


def make_ctx(run_id: str = "run-1", end: str = "2013-04-01", **overrides) -> StepContext:
    return StepContext.create(
        dag_id="training",
        run_id=run_id,
        interval_start=pd.Timestamp(end) - pd.DateOffset(months=1),
        interval_end=end,
        overrides=overrides,
    )


def test_ingest_writes_a_labelled_snapshot_without_leaky_columns(sliced):
    result = execute_step("ingest", make_ctx(), {})
    snapshot = storage.read_parquet(result["snapshot_uri"])
    window = sliced[sliced["time_hour"] < pd.Timestamp("2013-04-01", tz="UTC")]
    assert result["dropped_unlabelled"] == window["arr_delay"].isna().sum() > 0
    assert result["rows"] == len(snapshot) == window["arr_delay"].notna().sum()
    assert not LEAKY & set(snapshot.columns)
    expected_late = (window["arr_delay"].dropna() > 15).mean()
    assert snapshot["late"].mean() == pytest.approx(expected_late)
    assert result["window"]["start"].startswith("2013-01-01")
    # The data version depends on content only: another run over the same window gets the same hash.
    again = execute_step("ingest", make_ctx("run-2"), {})
    assert again["data_hash"] == result["data_hash"]
    assert again["snapshot_uri"] != result["snapshot_uri"]


def test_ingest_window_follows_config_and_empty_window_is_named(sliced):
    one_month = execute_step("ingest", make_ctx(window_months=1), {})
    assert one_month["window"] == {"start": "2013-03-01T05:00:00+00:00", "end": "2013-04-01T04:00:00+00:00"}
    snapshot = storage.read_parquet(one_month["snapshot_uri"])
    assert snapshot["time_hour"].min() >= pd.Timestamp("2013-03-01T05:00", tz="UTC")
    # inside the dataset's span, but the source (a slice of Jan-Mar) has no rows there
    with pytest.raises(DataError, match="no rows in the source"):
        execute_step("ingest", make_ctx(end="2013-09-01", window_months=3), {})


FEATURES_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "datasets" / "flights_features.yaml"


@pytest.mark.parametrize(
    ("step", "overrides", "config"),
    [
        ("ingest", {}, None),
        ("ingest_batch", {}, None),
        ("detect_drift", {"source": "batch"}, None),  # the dataset's rows, not the prediction log
        ("materialize_features", {}, FEATURES_CONFIG),
    ],
)
@pytest.mark.parametrize(
    ("end", "origin"),
    [
        ("2026-12-01", "the run's data interval (its logical date is 2026-12-04 17:58 UTC)"),
        ("2013-01-01", "the interval_end in the run's conf (the form)"),
    ],
)
def test_a_window_outside_the_data_fails_before_reading_and_says_why(
    store, monkeypatch, step, overrides, config, end, origin
):
    """A run whose rows lie outside schedule.start_date..end_date (the UI's default logical date is
    *now*) fails at the step that would read them, with a message naming the interval, the rows
    asked for, the data's span and where the interval came from; nothing is written."""
    if config:
        monkeypatch.setenv("MLOPS_CONFIG", str(config))
    ctx = StepContext.create(
        dag_id="training", run_id="outside", interval_end=end, interval_origin=origin, overrides=overrides
    )
    with pytest.raises(ConfigError) as failure:
        execute_step(step, ctx, {})
    message = str(failure.value)
    span = "it has data from 2013-01-01 to 2014-01-01"
    assert f"lies outside the data of dataset {ctx.config.dataset.name!r}: {span}" in message
    assert f"The interval came from {origin}." in message
    assert "Give an interval_end after 2013-01-01 and no later than 2014-01-01" in message
    written = [p.relative_to(store / "artifacts") for p in (store / "artifacts").rglob("*.json")]
    assert written and all(p.parts[0] == "audit" for p in written)  # the trigger is on the record
    assert [p for p in written if "-run_triggered-" in p.name]


def test_a_training_window_that_reaches_into_the_data_is_read():
    """The check is on the rows a step reads: a window ending a month after the data still holds two
    months of it (ingest reads window_months back from interval_end)."""
    ctx = StepContext.create(dag_id="training", run_id="edge", interval_end="2014-02-01")
    ctx.check_window(pd.Timestamp("2013-11-01", tz="UTC"), pd.Timestamp("2014-02-01", tz="UTC"))
    with pytest.raises(ConfigError, match=r"asks for rows in \[2014-01-01 00:00, 2014-02-01 00:00\)"):
        ctx.check_window()


def test_validate_passes_on_real_data_and_stores_the_report(sliced):
    ctx = make_ctx()
    result = execute_step("validate", ctx, {"ingest": execute_step("ingest", ctx, {})})
    assert result["passed"] and result["expectations"] >= 30
    assert storage.read_json(result["report_uri"])["success"] is True
    assert storage.exists(result["data_docs_uri"])


def _broken(kind: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    frame = frame.copy()
    if kind == "missing column":
        return frame.drop(columns=["temp"]), "column 'temp' is missing"
    if kind == "wrong type":
        frame["distance"] = frame["distance"].astype(str) + " miles"
        return frame, "distance"
    if kind == "constant column":  # regression: a constant categorical column registered a model
        frame["dest"] = "ORD"  # not in the key (a constant carrier also duplicates keys, caught before)
        return frame, "expect_column_unique_value_count_to_be_between(dest): observed 1"
    frame.loc[frame.index[::10], "humid"] = 250.0  # out of range: humidity is a percentage
    return frame, "expect_column_values_to_be_between(humid)"


@pytest.mark.parametrize("kind", ["missing column", "wrong type", "out of range", "constant column"])
def test_validate_names_each_failed_expectation(sliced, kind):
    ctx = make_ctx()
    ingested = execute_step("ingest", ctx, {})
    bad, expected = _broken(kind, storage.read_parquet(ingested["snapshot_uri"]))
    storage.write_parquet(ingested["snapshot_uri"], bad)
    with pytest.raises(ValidationFailed) as failure:
        execute_step("validate", ctx, {"ingest": ingested})
    assert expected in str(failure.value)
    report = storage.read_json(failure.value.report_uri)
    assert report["success"] is False and any(not r["success"] for r in report["results"])


def test_a_collapsed_category_set_fails_against_the_champions_training_data():
    from pipelines import validation

    profile = {"categorical": {"dest": {"frequencies": {f"D{i}": 0.01 for i in range(100)}}}}
    spec = validation.degenerate_expectations(["dest", "temp"], profile)
    floors = {c["kwargs"]["column"]: c["kwargs"]["min_value"] for c in spec}
    assert floors == {"dest": 20, "temp": 2}  # 20% of the reference's 100 destinations; never constant


def test_ingest_stops_when_date_parts_contradict_the_time_column(store, tmp_path, flights_frame, monkeypatch):
    """Regression: a time column shifted by hours (local time stored as UTC) passed every check."""
    shifted = flights_frame.iloc[::4].copy()
    shifted["time_hour"] = shifted["time_hour"] + pd.Timedelta(hours=5)
    path = tmp_path / "shifted.parquet"
    shifted.to_parquet(path)
    monkeypatch.setenv("MLOPS_CONFIG", str(dataset_config(tmp_path, str(path))))
    with pytest.raises(
        DataError, match=r"contradict the time column 'time_hour'.*'hour' on (\d+) of \1 rows"
    ):
        execute_step("ingest", make_ctx(), {})  # every row's hour is off by five
    # a column that only shares a name with a date part: the config says so, and ingest goes on
    monkeypatch.setenv("MLOPS_CONFIG", str(dataset_config(tmp_path, str(path), **{"dataset.date_parts": {}})))
    assert execute_step("ingest", make_ctx(), {})["rows"] > 10_000


def test_reference_profile_catches_a_unit_change(sliced):
    from pipelines import validation

    ctx = make_ctx()
    snapshot = storage.read_parquet(execute_step("ingest", ctx, {})["snapshot_uri"])
    profile = modeling.reference_profile(snapshot, ctx.config.dataset)
    checks = validation.reference_expectations(profile)
    docs = str(ctx.settings.home / "docs")
    assert validation.validate_frame(snapshot, checks, "ref", docs)["success"]
    kelvin = snapshot.assign(temp=(snapshot["temp"] - 32) * 5 / 9 + 273.15)
    report = validation.validate_frame(kelvin, checks, "ref", docs)
    failed = [validation.describe_failure(r) for r in report["results"] if not r["success"]]
    assert failed and all("temp" in line for line in failed)


def test_a_boolean_or_integer_category_passes_the_reference_check_it_came_from(tmp_path):
    """The profile keeps categories as the model reads them (strings); the snapshot keeps the
    source's types. The car loans' boolean ``repaid_loan_on_prev_car`` failed every retrain with
    "100% unexpected values [True, False]" until the check compared like with like."""
    from pipelines import validation
    from pipelines.config import load_config
    from pipelines.settings import DEFAULT_CONFIG

    dataset = load_config(DEFAULT_CONFIG.with_name("car_loan.yaml")).dataset
    n = 400
    frame = pd.DataFrame(
        {
            "car_value": np.linspace(1e4, 9e4, n), "debt_to_income_ratio": np.linspace(0, 1, n),
            "loan_length": np.arange(n) % 10, "driver_tenure": np.linspace(0, 9, n),
            "salary_range": np.array(["0 - 20K €", "20K - 40K €"])[np.arange(n) % 2],
            "size_of_downpayment": np.array(["0%", "10%", "20%"])[np.arange(n) % 3],
            "repaid_loan_on_prev_car": np.arange(n) % 3 == 0,  # a bool column
            dataset.target.name: np.arange(n) % 2 == 0,
        }
    )  # fmt: skip
    frame["loan_length"] = frame["loan_length"].astype("int64")
    profile = modeling.reference_profile(frame, dataset)
    assert set(profile["categorical"]["repaid_loan_on_prev_car"]["frequencies"]) == {"True", "False"}
    checks = validation.reference_expectations(profile, frame)
    report = validation.validate_frame(frame, checks, "ref", str(tmp_path / "docs"))
    failed = [validation.describe_failure(r) for r in report["results"] if not r["success"]]
    assert report["success"], failed
    # a category the champion never saw still fails, in the source's own type too
    novel = frame.assign(size_of_downpayment="50%")
    report = validation.validate_frame(novel, validation.reference_expectations(profile, novel), "ref",
                                       str(tmp_path / "docs"))  # fmt: skip
    failed = [validation.describe_failure(r) for r in report["results"] if not r["success"]]
    assert failed and all("size_of_downpayment" in line for line in failed), failed


def test_reference_nulls_are_checked_on_dense_columns_only():
    from pipelines import validation

    profile = {
        "numeric": {
            "temp": {"null_fraction": 0.01, "quantiles": {"0.01": 10.0, "0.99": 90.0}},
            "wind_gust": {"null_fraction": 0.67, "quantiles": {"0.01": 16.0, "0.99": 40.0}},
        },
        "categorical": {},
    }
    nulls = {
        c["kwargs"]["column"]: c["kwargs"]["mostly"]
        for c in validation.reference_expectations(profile)
        if c["type"] == "expect_column_values_to_not_be_null"
    }
    assert nulls == {"temp": 0.89}  # seasonal gust reporting (59-87% null by month) is not broken data


def test_time_split_never_mixes_times(sliced):
    ctx = make_ctx()
    snapshot = storage.read_parquet(execute_step("ingest", ctx, {})["snapshot_uri"])
    splits = modeling.time_split(snapshot, "time_hour", 0.15, 0.15)
    assert splits.train["time_hour"].max() < splits.validation["time_hour"].min()
    assert splits.validation["time_hour"].max() < splits.test["time_hour"].min()
    assert sum(splits.sizes().values()) == len(snapshot)


def test_pipeline_registers_once_and_gate_rejects_a_shuffled_model(sliced):
    first = run_pipeline(TRAINING, make_ctx("run-1"))
    reg = first["register"]
    assert reg["registered"] and reg["version"] == "1"
    assert set(reg["aliases"]) == {"champion", "challenger"}

    settings = Settings.from_env()
    client = tracking.client(settings)
    version = client.get_model_version("flights-delay", "1")
    assert version.tags["data_hash"] == first["ingest"]["data_hash"]
    assert version.tags["airflow.run_id"] == "run-1"
    assert version.tags["gate.passed"] == "true"

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model("models:/flights-delay@champion")
    test = storage.read_parquet(first["train"]["test_uri"])
    proba = model.predict(modeling.model_input(test.head(50), make_ctx().config.dataset))
    assert np.asarray(proba).shape == (50, 2)
    assert np.allclose(np.asarray(proba).sum(axis=1), 1.0)

    # A retried register task (same DAG run) finds its version instead of creating another.
    retry = execute_step(
        "register", make_ctx("run-1"), {k: first[k] for k in ("ingest", "train", "evaluate")}
    )
    assert retry["version"] == "1" and retry["created"] is False

    # A model trained on shuffled labels must not pass; nothing is registered, champion stays.
    shuffled = run_pipeline(TRAINING, make_ctx("run-shuffled", shuffle_labels=True))
    assert shuffled["evaluate"]["passed"] is False
    assert shuffled["evaluate"]["metrics"]["roc_auc"] < 0.56
    assert shuffled["register"]["status"] == "skipped"
    assert len(client.search_model_versions("name = 'flights-delay'")) == 1
    assert client.get_model_version_by_alias("flights-delay", "champion").version in (1, "1")


def test_with_approval_on_the_first_version_waits_for_a_person_too(sliced, tmp_path, monkeypatch):
    """deploy.approval: a person approves every rollout, the first one included: register names the
    first version challenger only, and the deploy DAG makes it champion once approved."""
    monkeypatch.setenv(
        "MLOPS_CONFIG",
        str(dataset_config(tmp_path, str(tmp_path / "flights_slice.parquet"), **{"deploy.approval": True})),
    )
    reg = run_pipeline(TRAINING, make_ctx("run-approval"))["register"]
    assert reg["registered"] and reg["aliases"] == ["challenger"]
    client = tracking.client(Settings.from_env())
    assert "champion" not in client.get_registered_model("flights-delay").aliases


def test_logistic_regression_and_search(sliced):
    ctx = make_ctx("run-lr", estimator="logistic_regression")
    results = run_pipeline(TRAINING[:3], ctx)
    assert results["train"]["estimator"] == "logistic_regression"
    assert results["train"]["validation"]["roc_auc"] > 0.6

    ctx = make_ctx("run-search", search=True)
    ctx = StepContext(
        **{
            **ctx.__dict__,
            "config": ctx.config.model_copy(
                update={
                    "training": ctx.config.training.model_copy(
                        update={"search": ctx.config.training.search.model_copy(update={"n_iter": 2})}
                    )
                }
            ),
        }
    )
    results = run_pipeline(TRAINING[:3], ctx)
    assert set(results["train"]["best_params"]) <= set(ctx.config.training.search.space)
    assert results["train"]["best_params"]
