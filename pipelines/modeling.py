"""The model: time-ordered splits, the scikit-learn Pipeline, metrics and the reference profile.

One ``Pipeline`` holds preprocessing and estimator, so serving applies exactly
the features training saw.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from pipelines.config import Dataset, Training
from pipelines.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def time_split(frame: pd.DataFrame, time_column: str, validation: float, test: float) -> Splits:
    """Split by time: train is oldest, test newest; one timestamp never straddles two splits.

    The cuts are the row quantiles at the fractions. When time is too coarse for them (yearly
    snapshots: two quantiles fall on one year) they move to the distinct times whose share of
    rows is nearest to the fractions, so that no split is empty.
    """
    times = frame[time_column]
    cut_val = times.quantile(1 - validation - test, interpolation="lower")
    cut_test = times.quantile(1 - test, interpolation="lower")
    if not (times.min() < cut_val < cut_test):  # a split would be empty: coarse time
        cut_val, cut_test = _coarse_cuts(times, validation, test)
    return _cut(frame, times, cut_val, cut_test)


def _coarse_cuts(times: pd.Series, validation: float, test: float) -> tuple[Any, Any]:
    """The two distinct times nearest to the fractions that leave every split a time of its own."""
    counts = times.value_counts().sort_index()
    if len(counts) < 3:
        raise DataError(
            f"the window has {len(counts)} distinct time(s) in {times.name!r}; a time split needs at"
            " least 3 (one each for train, validation and test): widen the window"
            " (ingest.window_months), or set training.split.method: random (not time-honest)"
        )
    before = np.concatenate([[0.0], counts.cumsum().to_numpy()[:-1]]) / len(times)  # share before each
    k = len(counts)
    i_val = 1 + int(np.argmin(np.abs(before[1 : k - 1] - (1 - validation - test))))
    i_test = i_val + 1 + int(np.argmin(np.abs(before[i_val + 1 : k] - (1 - test))))
    return counts.index[i_val], counts.index[i_test]


def _cut(frame: pd.DataFrame, times: pd.Series, cut_val: Any, cut_test: Any) -> Splits:
    splits = Splits(
        train=frame.loc[times < cut_val],
        validation=frame.loc[(times >= cut_val) & (times < cut_test)],
        test=frame.loc[times >= cut_test],
    )
    return _non_empty(
        splits,
        f"cuts at {cut_val} and {cut_test}; the window's times run from {times.min()} to {times.max()}):"
        " move training.split.validation_start and test_start inside the window, or leave them unset to"
        " cut at the fractions",
    )


def _non_empty(splits: Splits, why: str) -> Splits:
    """``splits``, or a DataError naming the first empty one and ``why`` it is."""
    for name, part in vars(splits).items():
        if len(part) == 0:
            raise DataError(f"the {name} split is empty ({why}")
    return splits


def split_window(frame: pd.DataFrame, dataset: Dataset, training: Training) -> Splits:
    """Train, validation and test as ``training.split`` asks (see :class:`pipelines.config.Split`)."""
    split = training.split
    if split.method == "random":
        log.warning(
            "training.split.method is random: validation and test rows are not later than the"
            " training rows, so their scores overstate what the model will do on future data"
        )
        return _random_split(frame, training)
    times = frame[dataset.time_column]
    if split.validation_start is not None and split.test_start is not None:
        return _cut(frame, times, _as_time(split.validation_start, times), _as_time(split.test_start, times))
    return time_split(frame, dataset.time_column, training.validation_fraction, training.test_fraction)


def _as_time(value: Any, times: pd.Series) -> pd.Timestamp:
    """A configured date in the time column's zone (naive dates are read as that zone, or UTC)."""
    stamp = pd.Timestamp(value)
    zone = getattr(times.dt, "tz", None)
    if zone is None:
        return stamp.tz_convert(None) if stamp.tzinfo else stamp
    return stamp.tz_convert(zone) if stamp.tzinfo else stamp.tz_localize(zone)


def _random_split(frame: pd.DataFrame, training: Training) -> Splits:
    """Rows, or whole groups of ``split.group_column``, drawn at random: not time-honest."""
    group = training.split.group_column
    rng = np.random.default_rng(training.random_state)
    if group is not None:
        if group not in frame.columns:
            raise DataError(f"training.split.group_column {group!r} is not a column of the window")
        keys = frame[group].astype("string").fillna("<missing>")
        unique = keys.unique()
        draw = pd.Series(rng.random(len(unique)), index=unique)
        u = keys.map(draw).to_numpy()
    else:
        u = rng.random(len(frame))
    test, validation = training.test_fraction, training.validation_fraction
    splits = Splits(
        train=frame.loc[u >= test + validation],
        validation=frame.loc[(u >= test) & (u < test + validation)],
        test=frame.loc[u < test],
    )
    what = f"groups of {group!r}" if group else "rows"
    return _non_empty(splits, f"the window has too few {what} for a random split)")


def features_and_label(frame: pd.DataFrame, dataset: Dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """Model input (typed feature columns) and the boolean label as 0/1."""
    return model_input(frame, dataset), frame[dataset.target.name].astype(int).to_numpy()


def model_input(frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Feature columns with stable dtypes: numbers as float64, categories as strings."""
    missing = [c for c in dataset.features.all if c not in frame.columns]
    if missing:
        raise DataError(f"feature columns missing: {missing}")
    out = pd.DataFrame(index=frame.index)
    for col in dataset.features.numeric:
        try:
            out[col] = pd.to_numeric(frame[col], errors="raise").astype("float64")
        except (ValueError, TypeError) as exc:
            raise DataError(f"numeric feature {col!r} has values that are not numbers: {exc}") from exc
    for col in dataset.features.categorical:
        out[col] = frame[col].astype("string").astype(object).where(frame[col].notna(), None)
    return out


ESTIMATOR_DEFAULTS: dict[str, dict[str, Any]] = {
    "hist_gradient_boosting": {"learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20},
    "logistic_regression": {"C": 1.0, "max_iter": 1000},
}

ESTIMATOR_CLASSES = {
    "hist_gradient_boosting": "HistGradientBoostingClassifier",
    "logistic_regression": "LogisticRegression",
}


def build_pipeline(dataset: Dataset, training: Training, params: dict[str, Any] | None = None):
    """The preprocessing + estimator Pipeline for the configured estimator."""
    numeric, categorical = dataset.features.numeric, dataset.features.categorical
    kwargs = {**ESTIMATOR_DEFAULTS[training.estimator], **training.params, **(params or {})}
    if training.estimator == "hist_gradient_boosting":
        # Native categorical support: ordinal codes, unknown categories become missing.
        pre = ColumnTransformer(
            [
                ("num", "passthrough", numeric),
                (
                    "cat",
                    OrdinalEncoder(
                        handle_unknown="use_encoded_value",
                        unknown_value=np.nan,
                        encoded_missing_value=np.nan,
                        max_categories=250,
                    ),
                    categorical,
                ),
            ],
            verbose_feature_names_out=False,
        )
        mask = [False] * len(numeric) + [True] * len(categorical)
        constraints = {}
        if training.monotonic:  # columns leave the transformer numeric first, then categorical
            constraints["monotonic_cst"] = [training.monotonic.get(c, 0) for c in numeric] + [0] * len(
                categorical
            )
        estimator = HistGradientBoostingClassifier(
            categorical_features=mask,
            **constraints,
            early_stopping=True,
            random_state=training.random_state,
            **kwargs,
        )
        return Pipeline([("preprocess", pre), ("model", estimator)])
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="ignore", min_frequency=20),
                ),
                categorical,
            ),
        ],
        verbose_feature_names_out=False,
    )
    return Pipeline([("preprocess", pre), ("model", LogisticRegression(**kwargs))])


def continue_training(champion: Pipeline, x: pd.DataFrame, y: np.ndarray, iterations: int) -> Pipeline:
    """Stateful retraining: the champion's fitted preprocessing, its model continued on new data.

    Logistic regression starts from the champion's coefficients (``warm_start``). Histogram
    gradient boosting keeps the champion's trees and adds up to ``iterations`` more, fitted to
    what the champion gets wrong on the new window. scikit-learn's own ``warm_start`` would
    re-bin the new data and then feed the old trees bin indices from the new bins (their splits
    are stored as bin indices for training), so the champion's bin edges are kept instead.
    """
    import copy

    model = copy.deepcopy(champion)
    pre, estimator = model.named_steps["preprocess"], model.named_steps["model"]
    xt = pre.transform(x)
    if isinstance(estimator, HistGradientBoostingClassifier):
        estimator.set_params(warm_start=True, max_iter=estimator.n_iter_ + iterations)
        estimator.__class__ = _ContinuedBoosting
        try:
            estimator.fit(xt, y)
        finally:
            estimator.__class__ = HistGradientBoostingClassifier
            estimator.__dict__.pop("_kept_bin_mapper", None)
        estimator.set_params(warm_start=False)
    elif isinstance(estimator, LogisticRegression):
        estimator.set_params(warm_start=True)
        estimator.fit(xt, y)
        estimator.set_params(warm_start=False)
    else:
        raise DataError(f"stateful training is not supported for {type(estimator).__name__}")
    return model


class _ContinuedBoosting(HistGradientBoostingClassifier):
    """Warm-started boosting that bins new data with the fitted model's own bin edges.

    Used only for the duration of one ``fit``: the fitted object is switched back to the plain
    class, so saved models never reference this one.
    """

    def fit(self, X, y, sample_weight=None):
        self._kept_bin_mapper = self._bin_mapper
        return super().fit(X, y, sample_weight=sample_weight)

    def _bin_data(self, X, sample_weight, is_training_data):
        if is_training_data:
            self._bin_mapper = self._kept_bin_mapper
            return np.asfortranarray(self._bin_mapper.transform(X))
        return super()._bin_data(X, sample_weight, is_training_data)


def reference_sample(
    frame: pd.DataFrame, dataset: Dataset, model: Pipeline, rows: int, seed: int
) -> pd.DataFrame:
    """Training rows kept as the drift reference: features, label and the model's probability."""
    sample = frame.sample(n=min(rows, len(frame)), random_state=seed).sort_values(dataset.time_column)
    x, y = features_and_label(sample, dataset)
    out = x.reset_index(drop=True)
    out[dataset.target.name] = y.astype("int8")
    out[PREDICTION_COLUMN] = model.predict_proba(x)[:, 1]
    return out


# The model's probability as a column of reference samples and monitoring windows.
PREDICTION_COLUMN = "prediction"


def best_f1_threshold(y_true: np.ndarray, proba: np.ndarray) -> float:
    """The decision threshold that maximises F1 (chosen on validation data, applied to test)."""
    precision, recall, thresholds = precision_recall_curve(y_true, proba)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(precision),
        where=(precision + recall) > 0,
    )
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def calibration_bins(y_true: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: per probability bin, mean predicted vs observed rate."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    table = []
    for b in range(bins):
        sel = index == b
        if sel.any():
            table.append(
                {
                    "bin_low": float(edges[b]),
                    "bin_high": float(edges[b + 1]),
                    "count": int(sel.sum()),
                    "mean_predicted": float(proba[sel].mean()),
                    "observed_rate": float(y_true[sel].mean()),
                }
            )
    return table


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """ROC AUC, PR AUC, log loss, Brier, F1/precision/recall at the threshold, calibration error."""
    both = len(np.unique(y_true)) == 2
    pred = (proba >= threshold).astype(int)
    bins = calibration_bins(y_true, proba)
    ece = sum(b["count"] * abs(b["mean_predicted"] - b["observed_rate"]) for b in bins) / max(len(y_true), 1)
    return {
        "rows": len(y_true),
        "positive_rate": float(np.mean(y_true)) if len(y_true) else float("nan"),
        "roc_auc": float(roc_auc_score(y_true, proba)) if both else None,
        "pr_auc": float(average_precision_score(y_true, proba)) if both else None,
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
        "brier": float(brier_score_loss(y_true, proba)),
        "accuracy": float(np.mean(pred == y_true)) if len(y_true) else float("nan"),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "threshold": float(threshold),
        "expected_calibration_error": float(ece),
    }


def reference_profile(frame: pd.DataFrame, dataset: Dataset) -> dict[str, Any]:
    """Summary of the training data that later validation (and drift checks) compare against."""
    profile: dict[str, Any] = {"rows": len(frame), "numeric": {}, "categorical": {}}
    for col in dataset.features.numeric:
        values = pd.to_numeric(frame[col], errors="coerce")
        q = values.quantile([0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0])
        profile["numeric"][col] = {
            "null_fraction": float(values.isna().mean()),
            "mean": float(values.mean()),
            "std": float(values.std()),
            "quantiles": {f"{k:g}": float(v) for k, v in q.items()},
        }
    for col in dataset.features.categorical:
        counts = frame[col].astype("string").value_counts(normalize=True, dropna=True)
        profile["categorical"][col] = {
            "null_fraction": float(frame[col].isna().mean()),
            "frequencies": {str(k): float(v) for k, v in counts.items()},
        }
    label = frame[dataset.target.name].astype(float)
    profile["label"] = {"name": dataset.target.name, "positive_rate": float(label.mean())}
    return profile
