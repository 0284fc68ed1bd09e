"""Drift statistics against known distributions, the minimum-sample guard and the retrain policy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from pipelines import drift, monitoring
from pipelines.config import Drift, Monitoring, Retrain, load_config
from pipelines.settings import DEFAULT_CONFIG

RNG_SEED = 20130401


def _reference(values, kind: str) -> drift.ReferenceColumn:
    return drift.Reference.from_frame(pd.DataFrame({"x": values}), {"x": kind}).columns["x"]


def test_numeric_statistics_equal_scipy():
    rng = np.random.default_rng(RNG_SEED)
    ref, cur = rng.normal(size=5000), rng.normal(0.2, 1.3, size=3000)
    got = drift.numeric_statistics(_reference(ref, "numeric"), cur)
    ks = stats.ks_2samp(ref, cur, method="asymp")
    assert got["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-12)
    assert got["ks"] == pytest.approx(ks.pvalue, rel=1e-9)
    assert got["wasserstein"] == pytest.approx(stats.wasserstein_distance(ref, cur) / np.std(ref), rel=1e-9)


def test_categorical_statistics_equal_scipy():
    ref = pd.Series(["a"] * 500 + ["b"] * 300 + ["c"] * 200)
    cur = pd.Series(["a"] * 300 + ["b"] * 300 + ["c"] * 300 + ["d"] * 100)
    got = drift.categorical_statistics(_reference(ref, "categorical"), cur)
    table = np.array([[500, 300, 200, 0], [300, 300, 300, 100]])
    assert got["chi2"] == pytest.approx(stats.chi2_contingency(table, correction=False).pvalue)
    p, q = np.array([0.5, 0.3, 0.2, 0]), np.array([0.3, 0.3, 0.3, 0.1])
    assert got["jensenshannon"] == pytest.approx(float(distance.jensenshannon(p, q)))
    assert got["linf"] == pytest.approx(0.2)
    assert got["new_categories"] == 1


@pytest.mark.parametrize(
    ("kind", "method", "threshold", "max_rate"),
    [
        # p-value tests: about the stated rate (1%); allow three binomial standard deviations
        ("numeric", "ks", 0.01, 0.01 + 3 * (0.01 * 0.99 / 400) ** 0.5),
        ("categorical", "chi2", 0.01, 0.01 + 3 * (0.01 * 0.99 / 400) ** 0.5),
        # distances at their default thresholds: sampling noise alone stays well below them
        ("numeric", "wasserstein", 0.1, 0.0),
        ("numeric", "psi", 0.2, 0.0),
        ("categorical", "jensenshannon", 0.1, 0.0),
        ("categorical", "linf", 0.3, 0.0),
    ],
)
def test_no_drift_gives_no_alarm_beyond_the_stated_rate(kind, method, threshold, max_rate):
    rng = np.random.default_rng(RNG_SEED)
    rule = drift.ColumnRule(kind, method, threshold)
    draw = (
        (lambda n: rng.gamma(2.0, 3.0, size=n))
        if kind == "numeric"
        else (lambda n: rng.choice(list("abcdef"), size=n, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05]))
    )
    ref = _reference(draw(20_000), kind)
    alarms = 0
    for _ in range(400):
        result = drift.compare_column("x", ref, pd.Series(draw(2_000)), rule, min_rows=500)
        alarms += bool(result["drifted"])
    assert alarms / 400 <= max_rate


@pytest.mark.parametrize("method", ["ks", "wasserstein", "psi"])
def test_a_shifted_numeric_feature_is_detected(method):
    rng = np.random.default_rng(RNG_SEED)
    ref = _reference(rng.normal(10, 2, size=20_000), "numeric")
    shifted = pd.Series(rng.normal(11.5, 2, size=2_000))  # +0.75 standard deviations
    threshold = drift.DEFAULT_THRESHOLDS[method]
    result = drift.compare_column("x", ref, shifted, drift.ColumnRule("numeric", method, threshold), 500)
    assert result["status"] == "drift" and result["drifted"] is True
    assert (result["method"], result["threshold"]) == (method, threshold)


@pytest.mark.parametrize("method", ["chi2", "jensenshannon", "linf"])
def test_a_shifted_category_share_is_detected(method):
    rng = np.random.default_rng(RNG_SEED)
    ref = _reference(rng.choice(list("abc"), size=20_000, p=[0.6, 0.3, 0.1]), "categorical")
    current = pd.Series(rng.choice(list("abc"), size=2_000, p=[0.2, 0.3, 0.5]))
    rule = drift.ColumnRule("categorical", method, drift.DEFAULT_THRESHOLDS[method])
    assert drift.compare_column("x", ref, current, rule, 500)["drifted"] is True


def test_too_few_rows_is_insufficient_data_never_an_alarm():
    rng = np.random.default_rng(RNG_SEED)
    ref = _reference(rng.normal(size=10_000), "numeric")
    far_away = pd.Series(rng.normal(100, 1, size=499))
    result = drift.compare_column("x", ref, far_away, drift.ColumnRule("numeric", "ks", 0.01), min_rows=500)
    assert result["status"] == drift.INSUFFICIENT
    assert result["drifted"] is None and result["score"] is None
    assert "499" in result["reason"]
    assert drift.drift_share([result]) == (None, 0, 0)


def test_missing_values_are_left_out_and_reported():
    rng = np.random.default_rng(RNG_SEED)
    ref = _reference(rng.normal(size=10_000), "numeric")
    values = pd.Series(rng.normal(size=2_000))
    values[:1_000] = np.nan
    result = drift.compare_column("x", ref, values, drift.ColumnRule("numeric", "wasserstein", 0.1), 500)
    assert result["n_current"] == 1_000 and result["missing_current"] == pytest.approx(0.5)
    assert result["drifted"] is False


def test_a_method_of_the_wrong_kind_is_refused():
    with pytest.raises(ValueError, match="for numeric columns"):
        drift.ColumnRule("categorical", "ks", 0.01)
    with pytest.raises(ValueError, match="unknown drift method"):
        drift.ColumnRule("numeric", "kl", 0.01)


# -- monitoring: rules from config, the report, the retrain policy --------------------------------


@pytest.fixture(scope="module")
def config():
    return load_config(DEFAULT_CONFIG)


def test_column_rules_come_from_config_with_per_column_overrides(config):
    rules = monitoring.column_rules(config.dataset, config.monitoring.drift)
    assert rules["temp"] == drift.ColumnRule("numeric", "wasserstein", 0.1)
    assert rules["carrier"] == drift.ColumnRule("categorical", "jensenshannon", 0.1)
    assert rules["prediction"] == drift.ColumnRule("numeric", "psi", 0.2)  # flights.yaml override
    assert rules["late"].kind == "categorical"  # the label
    custom = Drift(numeric_method="ks", thresholds={"ks": 0.001}, columns={"dest": {"method": "linf"}})
    rules = monitoring.column_rules(config.dataset, custom)
    assert rules["temp"] == drift.ColumnRule("numeric", "ks", 0.001)
    assert rules["dest"] == drift.ColumnRule("categorical", "linf", 0.3)


def test_an_unknown_column_override_is_a_config_error(config):
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="tempreature"):
        monitoring.column_rules(config.dataset, Drift(columns={"tempreature": {"threshold": 0.2}}))


SHIFTED = ["temp", "dewp", "humid", "wind_speed", "pressure"]  # 5 of 16 features: 31% >= 30%


def _window(config, rows: int, temp_shift: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({c: rng.normal(50, 10, size=rows) for c in config.dataset.features.numeric})
    for c in config.dataset.features.categorical:
        frame[c] = rng.choice(["A", "B", "C"], size=rows)
    for column in SHIFTED:
        frame[column] += temp_shift
    frame["prediction"] = rng.beta(2, 5, size=rows)
    frame["late"] = (rng.random(rows) < frame["prediction"]).astype(float)
    frame["model_version"], frame["route"] = "3", "champion"
    return frame


def test_the_report_names_drifted_features_and_the_performance(config):
    reference = _window(config, 20_000, seed=1)
    report = monitoring.detect(
        reference, _window(config, 3_000, temp_shift=15, seed=2), dataset=config.dataset,
        config=config.monitoring, champion_version="3", training={"value": 0.75, "counts": [500, 1500]},
    )  # fmt: skip
    assert report["drift"]["status"] == "drift"
    assert set(report["drift"]["drifted_features"]) == set(SHIFTED)
    assert report["drift"]["share"] == pytest.approx(5 / 16)
    assert report["prediction"]["status"] == "ok" and report["label"]["status"] == "ok"
    assert report["performance"]["status"] in {"ok", "decay"}
    assert report["performance"]["labelled_rows"] == 3_000


def test_a_small_window_is_insufficient_and_asks_for_nothing(config):
    reference = _window(config, 20_000, seed=1)
    report = monitoring.detect(
        reference, _window(config, 200, temp_shift=40, seed=2), dataset=config.dataset,
        config=config.monitoring, champion_version="3", training={"value": 0.99, "counts": [500, 1500]},
    )  # fmt: skip
    assert report["drift"]["status"] == drift.INSUFFICIENT
    assert report["performance"]["status"] == drift.INSUFFICIENT
    decision = monitoring.retrain_decision(
        report, None, Retrain(), window_end=pd.Timestamp("2013-05-01", tz="UTC"), run_id="r1"
    )
    assert decision["retrain"] is False and "drift: insufficient data" in decision["reason"]


def test_a_window_the_champion_served_in_part_does_not_become_its_baseline(config):
    """Regression: a new champion's canary rows (a few thousand, part of the month) became its
    live baseline; one lucky early-month sample then made later months look like decay."""
    reference = _window(config, 20_000, seed=1)
    window = _window(config, 10_000, seed=2)
    window.loc[3_000:, "model_version"] = "2"  # the old champion answered 70% before the promotion
    shadow = _window(config, 4_000, seed=3).assign(model_version="4", route="shadow")  # not traffic
    common = {"dataset": config.dataset, "config": config.monitoring, "champion_version": "3",
              "training": {"value": 0.75, "counts": [500, 1500]}}  # fmt: skip
    partial = monitoring.detect(reference, pd.concat([window, shadow], ignore_index=True), **common)
    performance = partial["performance"]
    assert performance["labelled_rows"] == 3_000 and performance["live"] is not None  # still judged
    assert "new_baseline" not in performance and performance["served_share"] == pytest.approx(0.3)
    assert "v3 answered 30% of the window" in performance["reason"]
    full = monitoring.detect(reference, pd.concat([_window(config, 10_000, seed=2), shadow]), **common)
    assert full["performance"]["new_baseline"]["counts"] == full["performance"]["counts"]
    assert full["performance"]["served_share"] == 1.0  # shadow answers are not the window's traffic


def _drifted(champion: str = "3") -> dict:
    return {
        "champion_version": champion,
        "drift": {"status": "drift", "share": 0.5, "drifted": 8, "judged": 16, "threshold_share": 0.3,
                  "drifted_features": ["temp", "dewp"]},
        "performance": {"status": "ok", "metric": "roc_auc", "live": 0.7, "training": 0.72, "drop": 0.02,
                        "max_drop": 0.05, "baseline": 0.72, "baseline_kind": "first_window",
                        "p_value": 0.2, "alpha": 0.05},
    }  # fmt: skip


def test_one_drift_episode_gives_one_retrain():
    policy, may = Retrain(cooldown_hours=24 * 7), pd.Timestamp("2013-05-01", tz="UTC")
    first = monitoring.retrain_decision(_drifted(), None, policy, window_end=may, run_id="m-1")
    assert first["retrain"] is True and "temp, dewp" in first["reason"]
    request = {"requested_at": may.isoformat(), "champion_version": "3", "run_id": "m-1"}
    # the next daily window, same champion: the retrain is under way, no second request
    again = monitoring.retrain_decision(
        _drifted(), request, policy, window_end=may + pd.Timedelta(days=1), run_id="m-2"
    )
    assert again["retrain"] is False and "same episode" in again["reason"]
    # a retry of the requesting run repeats its own request
    retry = monitoring.retrain_decision(_drifted(), request, policy, window_end=may, run_id="m-1")
    assert retry["retrain"] is True
    # past the cooldown with the same champion (the retrain was rejected): ask again
    later = monitoring.retrain_decision(
        _drifted(), request, policy, window_end=may + pd.Timedelta(days=8), run_id="m-3"
    )
    assert later["retrain"] is True
    # a new champion is a new episode, even inside the cooldown
    new = monitoring.retrain_decision(
        _drifted(champion="4"), request, policy, window_end=may + pd.Timedelta(days=1), run_id="m-4"
    )
    assert new["retrain"] is True


def test_decay_alone_asks_for_a_retrain_and_triggers_can_be_turned_off():
    report = _drifted()
    report["drift"] = {**report["drift"], "status": "ok", "drifted_features": []}
    report["performance"] = {
        **report["performance"],
        "status": "decay",
        "live": 0.6,
        "drop": 0.12,
        "p_value": 0.001,
    }
    end = pd.Timestamp("2013-05-01", tz="UTC")
    decision = monitoring.retrain_decision(report, None, Retrain(), window_end=end, run_id="r")
    assert decision["retrain"] is True and "drop +0.1200" in decision["reason"]
    off = monitoring.retrain_decision(report, None, Retrain(on_decay=False), window_end=end, run_id="r")
    assert off["retrain"] is False


def test_the_retrain_state_tag_is_read_defensively():
    assert monitoring.last_request({}) is None
    assert monitoring.last_request({monitoring.RETRAIN_TAG: "not json"}) is None
    state = {"requested_at": "2013-05-01T00:00:00+00:00", "champion_version": "3", "run_id": "r"}
    assert monitoring.last_request({monitoring.RETRAIN_TAG: json.dumps(state)}) == state


def test_monitoring_defaults_are_the_documented_ones():
    defaults = Monitoring()
    assert (
        defaults.drift.numeric_method == "wasserstein"
        and defaults.drift.categorical_method == "jensenshannon"
    )
    assert drift.DEFAULT_THRESHOLDS == {
        "ks": 0.01, "chi2": 0.01, "wasserstein": 0.1, "psi": 0.2, "jensenshannon": 0.1, "linf": 0.3,
    }  # fmt: skip
    assert defaults.drift.min_rows == 500 and defaults.retrain.cooldown_hours == 168
