"""The shared small helpers: month arithmetic across a year's end, strict booleans, plain JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.errors import ConfigError
from pipelines.util import env_bool, field, months, next_month, plain, replay_months


def test_months_cross_the_year_and_take_full_dates():
    assert months("2013-11", "2014-02") == ["2013-11", "2013-12", "2014-01", "2014-02"]
    assert months("2013-04-01", "2013-04-30") == ["2013-04"]
    assert months("2013-05", "2013-04") == []
    assert next_month("2013-12") == "2014-01-01" and next_month("2013-04") == "2013-05-01"


def test_a_boolean_variable_is_strict():
    assert env_bool({"X": "On"}, "X", False) is True and env_bool({"X": "0"}, "X", True) is False
    assert env_bool({}, "X", True) is True and env_bool({"X": ""}, "X", False) is False
    with pytest.raises(ConfigError, match="X must be true or false, got 'maybe'"):
        env_bool({"X": "maybe"}, "X", False)


def test_plain_makes_json_values():
    value = {"a": np.float64(0.5), 1: (np.int64(2), float("nan")), "t": datetime(2013, 1, 1, tzinfo=UTC)}
    assert plain(value) == {"a": 0.5, "1": [2, None], "t": "2013-01-01T00:00:00+00:00"}
    assert field({"k": 1}, "k") == 1 and field(None, "k") is None and field(object(), "k") is None


def test_replay_months_come_from_the_span_of_the_config():
    # flights: data for 2013 (end exclusive); the car loans: Nov 2018 to Aug 2019
    assert replay_months("2013-01-01", "2014-01-01") == ("2013-03", "2013-04", "2013-12")
    assert replay_months("2018-11-01", "2019-09-01") == ("2019-01", "2019-02", "2019-08")
    # an end inside a month leaves that month out; no end: up to the last full month before now
    assert replay_months("2013-01-01", "2013-06-15") == ("2013-03", "2013-04", "2013-05")
    assert replay_months("2026-01-01", None, now=datetime(2026, 12, 7, tzinfo=UTC))[2] == "2026-11"
    assert replay_months("2013-01-01", "2014-01-01", train_months=1)[:2] == ("2013-01", "2013-02")


def test_a_span_too_short_for_a_replay_says_so():
    with pytest.raises(ConfigError, match=r"holds 3 full month.*needs more than 3"):
        replay_months("2013-01-01", "2013-04-01")
    with pytest.raises(ConfigError, match="holds 0 full month"):
        replay_months("2013-05-01", "2013-04-01")


def test_replay_months_given_are_kept_and_only_the_missing_come_from_the_span():
    # the replay starts right after the given training months (the loop's --train-last alone)
    assert replay_months("2013-01-01", "2014-01-01", train_last="2013-05") == (
        "2013-05",
        "2013-06",
        "2013-12",
    )
    # a given first month: the champion trains up to the month before it
    assert replay_months("2013-01-01", "2014-01-01", first="2013-08")[:2] == ("2013-07", "2013-08")
    # everything given: the span is not read, so a short span is no error
    given = {"train_last": "2013-01", "first": "2013-02", "last": "2013-03"}
    assert replay_months("2013-01-01", "2013-04-01", **given) == ("2013-01", "2013-02", "2013-03")
    assert replay_months("2013-01-01", "2013-04-01", first="2013-02", last="2013-03")[1:] == (
        "2013-02",
        "2013-03",
    )
