"""The gate: absolute floor, no-worse-than-champion, the change check skipped without a champion."""

from pipelines.config import Gate
from pipelines.gate import decide

GATE = Gate(metric="roc_auc", min_value=0.6, max_drop=0.01)


def test_first_model_needs_only_the_floor():
    decision = decide(GATE, {"roc_auc": 0.65}, None)
    assert decision["passed"]
    change = decision["checks"][1]
    assert change["skipped"] and change["reason"] == "no champion yet"


def test_below_the_floor_is_rejected_with_numbers():
    decision = decide(GATE, {"roc_auc": 0.52}, None)
    assert not decision["passed"]
    assert decision["reason"] == "absolute: roc_auc 0.5200 < 0.6000"


def test_worse_than_champion_beyond_the_band_is_rejected():
    decision = decide(GATE, {"roc_auc": 0.68}, {"roc_auc": 0.70})
    assert not decision["passed"]
    assert "vs_champion: roc_auc 0.6800 < 0.6900" in decision["reason"]


def test_slightly_worse_within_the_band_passes():
    assert decide(GATE, {"roc_auc": 0.695}, {"roc_auc": 0.70})["passed"]


def test_log_loss_is_compared_as_higher_is_better():
    gate = Gate(metric="neg_log_loss", min_value=-0.6, max_drop=0.0)
    assert decide(gate, {"log_loss": 0.5}, {"log_loss": 0.55})["passed"]
    assert not decide(gate, {"log_loss": 0.56}, {"log_loss": 0.55})["passed"]


def test_missing_metric_fails_closed():
    assert not decide(GATE, {"roc_auc": None}, None)["passed"]


def test_champion_trained_on_the_test_period_is_not_compared():
    note = "champion v3 was trained on data up to 2013-04-01, after this test set starts"
    decision = decide(GATE, {"roc_auc": 0.62}, {"roc_auc": 0.9}, not_comparable=note)
    assert decision["passed"]
    assert decision["checks"][1] == {"check": "vs_champion", "skipped": True, "reason": note, "passed": True}


def test_nan_metrics_count_as_missing():
    assert not decide(GATE, {"roc_auc": float("nan")}, None)["passed"]
    decision = decide(GATE, {"roc_auc": 0.7}, {"roc_auc": float("nan")})
    assert decision["passed"] and "has no roc_auc" in decision["checks"][1]["reason"]
