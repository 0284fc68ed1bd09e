"""When to retrain: the label-free estimate, the significance of a drop, importance-weighted drift,
the no-drift and injected-shift controls on a real flights model, and the policy backtest.

The model is a real fit on Jan-Mar 2013 (the backtest's own ``Replay``); the NannyML check runs
NannyML 0.13.1 itself, in its own virtualenv (``make nannyml``: its dependencies do not belong in
the pinned stack).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from pipelines import backtest, drift, estimation, monitoring, reports
from pipelines.config import load_config

ROOT = Path(__file__).resolve().parents[2]
NANNYML_PYTHON = ROOT / ".venv-nannyml" / "bin" / "python"


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "pipelines" / "datasets" / "flights.yaml")


@pytest.fixture(scope="module")
def replay(config):
    return backtest.Replay(config, first="2013-04", last="2013-06")


@pytest.fixture(scope="module")
def model(replay):
    """A 3-month model fit on Jan-Mar 2013, with its reference, importances and calibration."""
    return replay.fit(backtest.Strategy(3), replay.periods[0].start)


# -- the estimate and the test on a drop ----------------------------------------------------------


def test_the_expected_auc_of_calibrated_probabilities_is_the_auc_they_produce():
    rng = np.random.default_rng(0)
    p = rng.beta(2, 5, size=200_000)
    y = (rng.random(len(p)) < p).astype(int)  # calibrated by construction
    assert estimation.expected_roc_auc(p) == pytest.approx(roc_auc_score(y, p), abs=0.005)
    # ties: one probability for every row carries no ranking at all
    assert estimation.expected_roc_auc(np.full(1000, 0.3)) == pytest.approx(0.5)
    assert estimation.expected_roc_auc(np.zeros(10)) is None  # no row can be positive
    wrong_at_half = estimation.expected_error_rate(np.array([0.9, 0.1, 0.5]), 0.5)
    assert wrong_at_half == pytest.approx((0.1 + 0.1 + 0.5) / 3)


def test_calibration_is_learnt_on_held_out_rows_and_survives_a_round_trip():
    rng = np.random.default_rng(1)
    raw = rng.random(20_000)
    y = (rng.random(len(raw)) < raw**2).astype(int)  # the model's 0.5 is really 0.25
    calibration = estimation.Calibration.fit(raw, y)
    assert calibration(np.array([0.5]))[0] == pytest.approx(0.25, abs=0.05)
    again = estimation.Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert np.allclose(again(raw[:100]), calibration(raw[:100]))


def test_a_drop_is_significant_only_when_the_rows_make_it_so():
    noise = estimation.auc_drop(0.70, (2_000, 8_000), 0.69, (2_000, 8_000))
    assert noise["drop"] == pytest.approx(0.01) and noise["p_value"] > 0.05
    few = estimation.auc_drop(0.70, (50, 200), 0.62, (50, 200))
    assert few["p_value"] > 0.05  # 0.08 on 250 rows a side is still noise
    real = estimation.auc_drop(0.70, (5_000, 20_000), 0.66, (5_000, 20_000))
    assert real["p_value"] < 0.001
    assert estimation.auc_drop(0.7, (0, 0), 0.5, (10, 10))["p_value"] == pytest.approx(0.5)  # unknown counts


def test_a_shift_in_a_feature_the_model_ignores_weighs_nothing():
    results = [
        {"column": "a", "status": "drift", "drifted": True},
        {"column": "b", "status": "ok", "drifted": False},
        {"column": "c", "status": drift.INSUFFICIENT, "drifted": None},
    ]
    assert drift.weighted_share(results, {"a": 0.0, "b": 0.02, "c": 1.0}) == 0.0
    assert drift.weighted_share(results, {"a": 0.03, "b": 0.01}) == pytest.approx(0.75)
    assert drift.weighted_share(results, {}) is None


# -- controls on a real model ---------------------------------------------------------------------


def _resampled(replay, model, rows: int, seed: int = 7) -> pd.DataFrame:
    """Rows drawn from the model's own training period, scored by it: a window with no drift."""
    history = replay.window(backtest.Strategy(3), model.until)
    picked = history.sample(n=rows, replace=True, random_state=seed)
    x, y = backtest.modeling.features_and_label(picked, replay.dataset)
    frame = x.reset_index(drop=True)
    frame[replay.dataset.target.name] = y.astype(float)
    return frame


def _judge(replay, model, frame: pd.DataFrame, config) -> tuple[dict, dict]:
    window = frame.copy()
    features = window[replay.dataset.features.all]
    window["prediction"] = model.pipeline.predict_proba(features)[:, 1]
    window["model_version"], window["route"] = "1", "champion"
    report = monitoring.detect(
        model.reference, window, dataset=replay.dataset, config=config.monitoring, champion_version="1",
        training=model.test, profile=model.profile, baseline=None,
    )  # fmt: skip
    end = pd.Timestamp("2013-04-01", tz="UTC")
    return report, monitoring.retrain_decision(
        report, None, config.monitoring.retrain, window_end=end, run_id="r"
    )


def test_no_alarm_on_a_window_resampled_from_the_training_period(replay, model, config):
    report, decision = _judge(replay, model, _resampled(replay, model, 20_000), config)
    assert report["drift"]["status"] == "ok" and report["drift"]["weighted_share"] < 0.1
    assert decision["retrain"] is False and "importance-weighted drift" in decision["reason"]
    # training rows flatter the model: the estimate (calibrated on held-out rows) stays below
    assert report["estimated"]["roc_auc"] < report["performance"]["live"]
    # on held-out rows of the same period the estimate agrees with what the labels say
    picks = np.random.default_rng(3).integers(0, len(model.test_y), 20_000)
    held_out = model.test_x.iloc[picks].reset_index(drop=True)
    held_out[replay.dataset.target.name] = model.test_y[picks].astype(float)
    report, _ = _judge(replay, model, held_out, config)
    assert report["estimated"]["error"] == pytest.approx(0.0, abs=0.01)


def test_a_shift_in_the_important_features_alarms_and_names_them(replay, model, config):
    """The most important numeric features, as many as hold the configured share of importance."""
    importances = model.profile["importances"]
    total, share = sum(importances.values()), config.monitoring.drift.share
    ranked = sorted(replay.dataset.features.numeric, key=lambda c: -importances[c])
    shifted = []
    for column in ranked:
        shifted.append(column)
        if sum(importances[c] for c in shifted) >= share * total:
            break
    assert len(shifted) <= 3  # a few features carry the model: flights' are the schedule and humidity
    frame = _resampled(replay, model, 20_000)
    for column in shifted:
        frame[column] = frame[column] + 2 * frame[column].std()
    report, decision = _judge(replay, model, frame, config)
    assert report["drift"]["status"] == "drift" and set(shifted) <= set(report["drift"]["drifted_features"])
    assert report["drift"]["share"] < 0.3  # few features: the unweighted rule would have stayed quiet
    assert decision["retrain"] is True and all(c in decision["reason"] for c in shifted)
    notify = config.monitoring.retrain.model_copy(update={"mode": "notify"})
    quiet = monitoring.retrain_decision(
        report, None, notify, window_end=pd.Timestamp("2013-04-01", tz="UTC"), run_id="r"
    )
    assert quiet["retrain"] is False and quiet["notify"] is True and shifted[0] in quiet["reason"]


def test_a_shift_in_features_the_model_barely_uses_does_not_alarm(replay, model, config):
    importances = model.profile["importances"]
    numeric = sorted(replay.dataset.features.numeric, key=lambda c: importances[c])
    weak = numeric[:5]  # 5 of 16 features: 31% of them, over the unweighted 30% share
    frame = _resampled(replay, model, 20_000)
    for column in weak:
        frame[column] = frame[column] + 2 * frame[column].std()
    report, decision = _judge(replay, model, frame, config)
    assert set(weak) <= set(report["drift"]["drifted_features"])
    assert report["drift"]["share"] >= 0.3  # the old, unweighted rule would have asked for a retrain
    assert report["drift"]["weighted_share"] < config.monitoring.drift.share
    assert decision["retrain"] is False


def test_a_window_below_the_minimum_rows_is_insufficient(replay, model, config):
    report, decision = _judge(replay, model, _resampled(replay, model, 200), config)
    assert report["drift"]["status"] == drift.INSUFFICIENT
    assert report["performance"]["status"] == drift.INSUFFICIENT
    assert report["estimated"]["status"] == drift.INSUFFICIENT
    assert decision["retrain"] is False


def test_cbpe_agrees_with_nannyml_on_the_same_rows(replay, model, tmp_path):
    """Our estimate against NannyML's CBPE, fit on the same test split and run on real later months."""
    assert NANNYML_PYTHON.exists(), "NannyML's virtualenv is missing: run `make nannyml`"
    reference = pd.DataFrame(
        {"p": model.pipeline.predict_proba(model.test_x)[:, 1], "y": model.test_y.astype(int)}
    )
    ours = {}
    months = []
    for i in range(len(replay.periods)):
        proba = replay.proba(model, i)
        months.append(pd.DataFrame({"p": proba, "month": i}))
        calibrated = estimation.Calibration.from_dict(model.profile["calibration"])(proba)
        ours[i] = estimation.expected_roc_auc(calibrated)
    reference.to_parquet(tmp_path / "reference.parquet")
    pd.concat(months).to_parquet(tmp_path / "analysis.parquet")
    script = """
import json, sys
import pandas as pd
import nannyml as nml
ref = pd.read_parquet(sys.argv[1]); ana = pd.read_parquet(sys.argv[2])
for frame in (ref, ana):
    frame["pred"] = (frame["p"] >= 0.5).astype(int)
out = {}
for month, rows in ana.groupby("month"):
    est = nml.CBPE(y_pred_proba="p", y_pred="pred", y_true="y", metrics=["roc_auc"],
                   chunk_number=1, problem_type="classification_binary")
    est.fit(ref)
    result = est.estimate(rows.drop(columns="month")).filter(period="analysis").to_df()
    out[int(month)] = float(result[("roc_auc", "value")].iloc[0])
print(json.dumps(out))
"""
    proc = subprocess.run(
        [NANNYML_PYTHON, "-c", script, tmp_path / "reference.parquet", tmp_path / "analysis.parquet"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "NML_DISABLE_USAGE_LOGGING": "1", "PYTHONPATH": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    assert set(theirs) == set(ours)
    for month, value in ours.items():
        assert value == pytest.approx(theirs[month], abs=0.01), (month, value, theirs[month])


# -- the backtest on a short replay ---------------------------------------------------------------


def test_the_backtest_compares_policies_on_a_short_replay(config, tmp_path):
    lines: list[str] = []
    result = backtest.run(config, first="2013-04", last="2013-06", windows=[3], progress=lines.append)
    assert any("oracle" in line for line in lines) and any("policy" in line for line in lines)
    by_name = {p["policy"]: p for p in result["policies"]}
    assert set(by_name) >= {
        "never", "monthly", "quarterly", "drift-or-decay (old rule)", "configured",
        "importance-weighted drift", "estimated decay (CBPE)", "significant decay",
    }  # fmt: skip
    assert by_name["never"]["retrains"] == 0 and by_name["never"]["alarms"] == 0
    assert by_name["monthly"]["retrains"] == 2  # after April and May; June is the last month served
    assert by_name["quarterly"]["retrains"] == 0  # the first quarter ends after June
    months = result["replay"]["months"]
    assert months == ["2013-04", "2013-05", "2013-06"]
    for name, rows in result["months"].items():
        assert [r["month"] for r in rows] == months
        for row in rows:  # no policy beats the best model any policy could have had
            assert row["live_auc"] <= row["oracle_auc"] + 0.005, (name, row)
    never = result["months"]["never"]
    assert never[0]["live_auc"] == pytest.approx(
        result["months"]["monthly"][0]["live_auc"]
    )  # same first model
    assert result["estimation"]["mean_absolute_error"] is not None
    curves = result["tradeoff"]["curves"]
    assert set(curves) == set(backtest.SCORES) and result["tradeoff"]["situations"] == 3
    for curve in curves.values():
        for point in curve["points"]:
            assert point["precision"] is None or 0 <= point["precision"] <= 1
    assert {s["strategy"] for s in result["strategies"]} == {"3 months, stateless", "12 months, stateful"}
    text = backtest.table_text(result)
    assert "oracle (best model each month)" in text and "monthly" in text
    page = reports.backtest_html(result)
    assert "data:image/png;base64," in page and "significant decay" in page
