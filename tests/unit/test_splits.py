"""Train, validation and test from any window: fine time, coarse time, explicit dates, random groups."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from pipelines import modeling
from pipelines.config import Split, Training, load_config
from pipelines.errors import DataError
from pipelines.settings import DEFAULT_CONFIG

DATASET = load_config(DEFAULT_CONFIG).dataset  # time_hour is the time column


def _frame(times, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = pd.to_datetime(pd.Series(times), utc=True)
    return pd.DataFrame({"time_hour": times, "carrier": rng.choice(list("ABCDEFGHIJ"), len(times))})


def _yearly(years=range(2016, 2021), rows_per_year=1_000) -> pd.DataFrame:
    """Survey-style snapshots: one timestamp per year."""
    return _frame([f"{y}-01-01" for y in years for _ in range(rows_per_year)])


def test_fine_time_cuts_exactly_as_the_row_quantiles():
    """Hourly data (flights): the cuts are the quantiles, as before, so models do not change."""
    frame = _frame(pd.date_range("2013-01-01", periods=5_000, freq="h").repeat(3))
    times = frame["time_hour"]
    splits = modeling.time_split(frame, "time_hour", 0.15, 0.15)
    assert splits.validation["time_hour"].min() == times.quantile(0.70, interpolation="lower")
    assert splits.test["time_hour"].min() == times.quantile(0.85, interpolation="lower")
    assert sum(splits.sizes().values()) == len(frame)


def test_yearly_snapshots_cut_at_the_years_nearest_the_fractions():
    """Regression: five yearly snapshots gave "the validation split is empty" at 0.15/0.15."""
    splits = modeling.split_window(_yearly(), DATASET, Training())
    years = {name: sorted(part["time_hour"].dt.year.unique()) for name, part in vars(splits).items()}
    assert years == {"train": [2016, 2017, 2018], "validation": [2019], "test": [2020]}
    uneven = _yearly(range(2016, 2019), 1_000)  # three years: one each, whatever the fractions
    splits = modeling.time_split(uneven, "time_hour", 0.05, 0.05)
    assert [len(p) for p in vars(splits).values()] == [1_000, 1_000, 1_000]


def test_too_few_distinct_times_names_the_settings_that_work():
    with pytest.raises(DataError, match=r"2 distinct time.*window_months.*method: random"):
        modeling.split_window(_yearly(range(2019, 2021)), DATASET, Training())


def test_explicit_dates_cut_there_and_a_date_outside_the_window_is_named():
    frame = _frame(pd.date_range("2013-01-01", "2013-12-31", freq="D"))
    training = Training(split=Split(validation_start="2013-09-01", test_start="2013-11-01"))
    splits = modeling.split_window(frame, DATASET, training)
    assert splits.train["time_hour"].max() < pd.Timestamp("2013-09-01", tz="UTC")
    assert splits.validation["time_hour"].min() == pd.Timestamp("2013-09-01", tz="UTC")
    assert splits.test["time_hour"].min() == pd.Timestamp("2013-11-01", tz="UTC")
    late = Training(split=Split(validation_start="2014-02-01", test_start="2014-03-01"))
    with pytest.raises(DataError, match=r"validation split is empty.*2014-02-01.*validation_start"):
        modeling.split_window(frame, DATASET, late)


def test_a_random_split_keeps_each_group_in_one_split_and_warns(caplog):
    frame = _yearly(range(2019, 2021), 2_000)  # two times only: a time split is impossible
    training = Training(split=Split(method="random", group_column="carrier"), random_state=7)
    with caplog.at_level(logging.WARNING, logger="pipelines.modeling"):
        splits = modeling.split_window(frame, DATASET, training)
    assert "not later than the training rows" in caplog.text
    groups = [set(part["carrier"]) for part in vars(splits).values()]
    assert all(groups) and not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(splits.sizes().values()) == len(frame)
    again = modeling.split_window(frame, DATASET, training)  # seeded: the same split every run
    assert again.test.index.equals(splits.test.index)
    rows = modeling.split_window(frame, DATASET, Training(split=Split(method="random")))
    assert abs(len(rows.test) / len(frame) - 0.15) < 0.03
    with pytest.raises(DataError, match="'region' is not a column"):
        modeling.split_window(frame, DATASET, Training(split=Split(method="random", group_column="region")))


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"validation_start": "2013-09-01"}, "both validation_start and test_start"),
        ({"validation_start": "2013-11-01", "test_start": "2013-09-01"}, "before test_start"),
        ({"method": "random", "validation_start": "2013-09-01", "test_start": "2013-11-01"}, "method: time"),
        ({"group_column": "carrier"}, "group_column needs method: random"),
    ],
)
def test_an_inconsistent_split_config_is_refused(split, message):
    with pytest.raises(ValidationError, match=message):
        Split(**split)
