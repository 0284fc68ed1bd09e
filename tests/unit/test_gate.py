"""The gate: absolute floor, no-worse-than-champion, the change check skipped without a champion."""

import pytest

from pipelines.config import Gate, SliceGate
from pipelines.gate import decide, slice_gaps

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


def _slices(scores: dict[str, tuple[int, float | None]]) -> dict:
    """An evaluate-shaped slice table for one column: value -> (rows, candidate ROC AUC)."""
    table = {
        value: {"rows": rows, "positive_rate": 0.2, "roc_auc": {"candidate": auc}}
        for value, (rows, auc) in scores.items()
    }
    return {"carrier": table}


def test_slice_gap_is_best_minus_worst_among_slices_with_enough_rows():
    check = SliceGate(max_gap=0.1, min_rows=300)
    report = slice_gaps(
        check, _slices({"AA": (900, 0.71), "UA": (800, 0.64), "HA": (40, 0.95), "OO": (500, None)})
    )
    carrier = report["columns"]["carrier"]
    assert carrier["gap"] == pytest.approx(0.07)
    assert carrier["best"] == {"value": "AA", "score": 0.71} and carrier["worst"]["value"] == "UA"
    assert carrier["unscored"] == ["HA", "OO"]  # too few rows, or one class only
    assert report["passed"] and carrier["passed"]


def test_a_wide_slice_gap_is_reported_and_rejects_only_when_gating():
    table = _slices({"AA": (900, 0.75), "EV": (900, 0.58)})
    reported = slice_gaps(SliceGate(max_gap=0.1, gating=False), table)
    assert not reported["passed"]
    assert decide(GATE, {"roc_auc": 0.7}, None, fairness=reported)["passed"]  # reported, not gating
    gating = slice_gaps(SliceGate(max_gap=0.1, gating=True), table)
    decision = decide(GATE, {"roc_auc": 0.7}, None, fairness=gating)
    assert not decision["passed"]
    assert (
        "slice_gap:carrier: roc_auc gap 0.1700 > 0.1000 (best AA 0.7500, worst EV 0.5800)"
        in decision["reason"]
    )


def test_a_single_scored_slice_has_no_gap():
    report = slice_gaps(SliceGate(), _slices({"AA": (900, 0.7), "HA": (20, 0.9)}))
    assert report["columns"]["carrier"]["gap"] is None and report["passed"]


def test_a_swing_wider_than_the_band_asks_a_person_instead_of_promoting():
    gate = Gate(metric="roc_auc", min_value=0.55, max_drop=0.01, swing_band=0.05)
    decision = decide(gate, {"roc_auc": 0.78}, {"roc_auc": 0.70})
    assert decision["passed"] and decision["approval_required"]
    assert "+0.0800, wider than the swing band ±0.05" in decision["approval_reason"]
    calm = decide(gate, {"roc_auc": 0.72}, {"roc_auc": 0.70})
    assert calm["passed"] and not calm["approval_required"] and calm["approval_reason"] is None


def test_no_swing_check_without_a_comparable_champion_or_for_a_rejected_candidate():
    gate = Gate(metric="roc_auc", min_value=0.55, max_drop=0.5, swing_band=0.05)
    assert not decide(gate, {"roc_auc": 0.9}, None)["approval_required"]  # first model
    assert not decide(gate, {"roc_auc": 0.9}, {"roc_auc": 0.6}, "trained on the test set")[
        "approval_required"
    ]
    worse = decide(gate, {"roc_auc": 0.62}, {"roc_auc": 0.70})  # within max_drop 0.5, below by 0.08
    assert worse["passed"] and worse["approval_required"]
    rejected = decide(Gate(min_value=0.95, swing_band=0.05), {"roc_auc": 0.9}, {"roc_auc": 0.6})
    assert not rejected["passed"] and not rejected["approval_required"]
