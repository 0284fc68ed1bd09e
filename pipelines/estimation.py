"""Performance before the labels come, and whether a drop in performance is more than noise.

Confidence-based performance estimation (CBPE, as NannyML names it): when a
model's probabilities are calibrated, a row with probability ``p`` is a
positive with probability ``p``. The expected confusion matrix at every
threshold follows, and from it the expected ROC curve and its area. The model's
own probabilities are calibrated first, by isotonic regression on its test
split at training time (``Calibration``); the map is stored with the model.

It holds while only the inputs move (covariate shift). When the relation
between inputs and outcome changes (concept shift), or the share of positives
moves for reasons the features do not show (prior shift), calibrated
probabilities are no longer calibrated, and the estimate is wrong in the
direction of the change: the realised value, once labels come, is the truth.

``auc_drop`` judges a realised drop: the Hanley-McNeil standard error of each
area and a one-sided z-test, so that a month of noise is not called decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Calibration:
    """A monotone map from the model's probability to the observed rate (isotonic regression)."""

    x: tuple[float, ...]
    y: tuple[float, ...]

    @classmethod
    def fit(cls, proba: np.ndarray, label: np.ndarray) -> Calibration:
        """Fit on held-out rows (the model's test split), never on its training rows."""
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            np.asarray(proba, dtype="float64"), np.asarray(label, dtype="float64")
        )
        return cls(tuple(map(float, iso.X_thresholds_)), tuple(map(float, iso.y_thresholds_)))

    def __call__(self, proba: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(proba, dtype="float64"), self.x, self.y)

    def to_dict(self) -> dict[str, list[float]]:
        return {"x": list(self.x), "y": list(self.y)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(tuple(data["x"]), tuple(data["y"]))


def expected_roc_auc(calibrated: np.ndarray) -> float | None:
    """The ROC AUC expected when each row is a positive with its calibrated probability.

    At each threshold the expected true positives are the sum of ``p`` above it and the expected
    false positives the sum of ``1 - p``; the area under the curve they trace is the estimate
    (NannyML's CBPE computes the same). None when no row can be either class.
    """
    p = np.sort(np.asarray(calibrated, dtype="float64"))[::-1]
    if len(p) == 0:
        return None
    tp, fp = np.cumsum(p), np.cumsum(1.0 - p)
    if tp[-1] <= 0 or fp[-1] <= 0:
        return None
    # one point per distinct probability: tied rows move the curve together (a diagonal step)
    last = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]
    tpr = np.r_[0.0, tp[last] / tp[-1]]
    fpr = np.r_[0.0, fp[last] / fp[-1]]
    return float(np.trapezoid(tpr, fpr))


def expected_error_rate(calibrated: np.ndarray, threshold: float) -> float | None:
    """Share of wrong answers expected at ``threshold`` (a positive answer is wrong with ``1 - p``)."""
    p = np.asarray(calibrated, dtype="float64")
    if len(p) == 0:
        return None
    return float(np.mean(np.where(p >= threshold, 1.0 - p, p)))


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley and McNeil's (1982) standard error of a ROC AUC from ``positives`` and ``negatives``."""
    if positives < 1 or negatives < 1:
        return math.inf
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (
        positives * negatives
    )
    return math.sqrt(max(var, 0.0))


def auc_drop(
    baseline: float, baseline_counts: tuple[int, int], live: float, live_counts: tuple[int, int]
) -> dict[str, float]:
    """How far ``live`` is below ``baseline``, and the one-sided p-value of "no drop".

    The two areas come from different rows (two windows), so their errors add; counts are
    (positives, negatives) of each window.
    """
    se = math.hypot(auc_standard_error(baseline, *baseline_counts), auc_standard_error(live, *live_counts))
    drop = baseline - live
    z = drop / se if se > 0 and math.isfinite(se) else 0.0
    return {"drop": drop, "standard_error": se, "z": z, "p_value": float(stats.norm.sf(z))}
