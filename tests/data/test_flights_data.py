"""Data tests: the real flights snapshot keeps its contract.

The snapshot is made by the real ingest step from the bundled source, on the default
window (Jan-Mar 2013), and checked with the project's own Great Expectations adapter:
the suite passes on it and names what is wrong on a corrupted copy; no column that
leaks the outcome survives ingest; the label's rate is sane; the flight key is unique.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines import modeling, storage, validation
from pipelines.config import load_expectations
from pipelines.context import StepContext
from pipelines.dataset import label_frame
from pipelines.settings import DEFAULT_CONFIG, Settings
from pipelines.steps import ingest

# Raw columns known only after the flight: they give the outcome away.
LEAKY = {"dep_delay", "dep_time", "arr_time", "air_time", "arr_delay"}
# A feature that ranks flights by lateness this well on its own is a leak, not a signal. In
# Jan-Mar 2013 the best honest column scores 0.61 (carrier); dep_delay, a leak, scores 0.90.
MAX_SINGLE_COLUMN_AUC = 0.75
# Share of late arrivals: 0.13 (Sep) to 0.33 (Dec) per month of 2013, 0.22-0.23 in Jan-Mar.
LATE_RATE_BAND = (0.10, 0.40)
# Cancelled flights (no arrival delay) dropped at ingest: 0.9% (Oct) to 5.4% (Feb, a blizzard).
MAX_UNLABELLED_SHARE = 0.08


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """The ingest step run for the interval ending 2013-04-01: its context, result and snapshot."""
    home = tmp_path_factory.mktemp("data-tests")
    settings = Settings(
        home=home,
        artifact_root=str(home / "artifacts"),
        tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        config_path=str(DEFAULT_CONFIG),
    )
    ctx = StepContext.create(
        dag_id="training", run_id="data-tests", interval_end="2013-04-01", settings=settings
    )
    result = ingest.run(ctx, {})
    return ctx, result, storage.read_parquet(result["snapshot_uri"])


def failed(report) -> dict[tuple[str, tuple[str, ...]], dict]:
    """Failed expectations of a report, keyed by (expectation type, columns)."""
    return {(r["expectation_type"], tuple(r["columns"])): r for r in report["results"] if not r["success"]}


def single_column_auc(values: pd.Series, y: np.ndarray) -> float:
    """How well one column alone ranks late flights (0.5: not at all, 1: perfectly), either way round.

    Numbers rank by value; categories by their own positive rate (in-sample, so an upper bound).
    """
    known = values.notna().to_numpy()
    values, y = values[known], y[known]
    if pd.api.types.is_numeric_dtype(values):
        score = values.to_numpy(dtype=float)
    else:
        score = values.map(pd.Series(y, index=values.index).groupby(values).mean()).to_numpy(dtype=float)
    auc = roc_auc_score(y, score)
    return max(auc, 1 - auc)


def test_the_expectation_suite_passes_on_a_real_window(ingested, tmp_path):
    """The bundled suite accepts three real months as ingest writes them (types after Parquet)."""
    ctx, _, snapshot = ingested
    spec = load_expectations(ctx.config)
    report = validation.validate_frame(snapshot, spec, ctx.config.dataset.name, str(tmp_path))
    problems = [validation.describe_failure(r) for r in failed(report).values()]
    assert problems == []
    assert report["success"] is True
    assert report["statistics"]["evaluated_expectations"] == len(spec)


def test_a_later_month_passes_the_checks_against_the_training_profile(ingested, tmp_path):
    """March passes the suite plus the checks validate adds from a Jan-Feb champion's profile."""
    ctx, _, snapshot = ingested
    dataset = ctx.config.dataset
    march = snapshot[dataset.time_column] >= pd.Timestamp("2013-03-01", tz="UTC")
    profile = modeling.reference_profile(snapshot[~march], dataset)
    reference = validation.reference_expectations(profile)
    spec = load_expectations(ctx.config) + reference
    report = validation.validate_frame(snapshot[march], spec, dataset.name, str(tmp_path))
    assert [validation.describe_failure(r) for r in failed(report).values()] == []
    # the profile checks really ran: one mean check per numeric feature with a spread
    means = [r for r in report["results"] if r["expectation_type"] == "expect_column_mean_to_be_between"]
    assert len(means) == len(dataset.features.numeric)


def test_a_corrupted_copy_fails_naming_each_expectation_and_column(ingested, tmp_path):
    """Humidity 150 %, an unknown origin and duplicated flights each fail their own expectation."""
    ctx, _, snapshot = ingested
    key = ctx.config.dataset.key
    bad = snapshot.copy()
    rows = np.random.default_rng(0).choice(len(bad), size=90, replace=False)
    bad.loc[rows[:40], "humid"] = 150.0
    bad.loc[rows[40:65], "origin"] = "XXX"
    bad = pd.concat([bad, bad.iloc[rows[65:]]], ignore_index=True)  # 25 flights twice

    report = validation.validate_frame(bad, load_expectations(ctx.config), "flights", str(tmp_path))

    failures = failed(report)
    humid = ("expect_column_values_to_be_between", ("humid",))
    origin = ("expect_column_values_to_be_in_set", ("origin",))
    unique = ("expect_compound_columns_to_be_unique", tuple(key))
    assert report["success"] is False
    assert set(failures) == {humid, origin, unique}
    assert failures[humid]["unexpected_count"] == 40
    assert failures[origin]["unexpected_count"] == 25
    assert failures[unique]["unexpected_count"] == 50  # both copies of each duplicated flight
    lines = {name: validation.describe_failure(r) for name, r in failures.items()}
    assert "(humid)" in lines[humid] and "150" in lines[humid]
    assert "(origin)" in lines[origin] and "XXX" in lines[origin]


def test_no_column_that_leaks_the_outcome_reaches_the_snapshot(ingested, flights_frame):
    """The source has dep_delay, arr_delay, ...; the snapshot and the model input never do."""
    ctx, result, snapshot = ingested
    dataset = ctx.config.dataset
    assert set(flights_frame.columns) >= LEAKY  # the raw source carries them ...
    assert not LEAKY & set(snapshot.columns)  # ... ingest drops every one
    assert list(snapshot.columns) == dataset.columns == result["columns"]
    assert not (LEAKY | {dataset.target.name}) & set(dataset.features.all)
    x, _ = modeling.features_and_label(snapshot, dataset)
    assert list(x.columns) == dataset.features.all
    assert "tailnum" not in snapshot.columns  # personal data: never stored


def test_no_single_feature_predicts_the_label_on_its_own(ingested, flights_frame):
    """Each feature alone ranks late flights weakly; a leaky column (dep_delay) would not."""
    ctx, _, snapshot = ingested
    dataset = ctx.config.dataset
    x, y = modeling.features_and_label(snapshot, dataset)
    scores = {col: single_column_auc(x[col], y) for col in x.columns}
    assert max(scores.values()) < MAX_SINGLE_COLUMN_AUC, scores
    # each carries some signal (weakest: wind_dir 0.514); a constant or scrambled column scores 0.5
    assert min(scores.values()) > 0.505
    # the same measure on the raw source flags the leak it is meant to catch
    labelled, _ = label_frame(flights_frame.copy(), dataset)
    y_raw = labelled[dataset.target.name].astype(int).to_numpy()
    assert single_column_auc(labelled["dep_delay"], y_raw) > MAX_SINGLE_COLUMN_AUC


def test_every_row_lies_inside_the_training_window(ingested):
    """No row from after the window's end (future data would leak into training)."""
    ctx, result, snapshot = ingested
    times = snapshot[ctx.config.dataset.time_column]
    assert str(times.dt.tz) == "UTC"
    assert times.min() >= pd.Timestamp(result["window"]["start"])
    assert times.max() < pd.Timestamp(result["window"]["end"])


def test_the_label_rate_is_sane_overall_and_per_month(ingested):
    """Late arrivals are a minority of 10-40 % in the window and in each month; few rows dropped."""
    ctx, result, snapshot = ingested
    dataset = ctx.config.dataset
    label = snapshot[dataset.target.name]
    assert label.dtype == bool
    low, high = LATE_RATE_BAND
    assert low < label.mean() < high
    months = snapshot[dataset.time_column].dt.tz_convert(ctx.config.schedule.timezone).dt.month
    per_month = label.groupby(months).mean()
    assert list(per_month.index) == [1, 2, 3]
    assert per_month.between(low, high).all(), per_month.to_dict()
    dropped_share = result["dropped_unlabelled"] / (result["rows"] + result["dropped_unlabelled"])
    assert 0 < dropped_share < MAX_UNLABELLED_SHARE


def test_the_flight_key_is_unique_and_complete(ingested):
    """No two rows share (carrier, flight, origin, time_hour) and no key part is missing."""
    ctx, _, snapshot = ingested
    key = ctx.config.dataset.key
    assert snapshot[key].notna().all().all()
    duplicated = snapshot[snapshot.duplicated(key, keep=False)]
    assert duplicated.empty, duplicated[key].head()
