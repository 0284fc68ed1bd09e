"""The replay: a dataset's months as periods, and a cache of the fits and scores the policies share.

A ``Strategy`` is how a model is (re)trained; ``Replay.fit`` trains it on the window ending at
a month boundary (``modeling``) with what the gate and monitoring need from training, and
``Replay.proba``/``Replay.auc`` score a fit on a month. Fits and scores are cached.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipelines import drift, modeling, monitoring, sources
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Strategy:
    """How a model is (re)trained: the window (months; None is all history) and the mode."""

    window_months: int | None
    mode: Literal["stateless", "stateful"] = "stateless"

    @property
    def label(self) -> str:
        window = "all history" if self.window_months is None else f"{self.window_months} months"
        return f"{window}, {self.mode}"


@dataclass
class Model:
    """One fit: the pipeline and what the gate and monitoring need from training."""

    key: tuple
    pipeline: Any
    until: pd.Timestamp
    fit_seconds: float
    threshold: float
    test_x: pd.DataFrame
    test_y: np.ndarray
    test: dict[str, Any]  # {"value": test ROC AUC, "counts": [positives, negatives]}
    reference: drift.Reference
    profile: dict[str, Any]


@dataclass(frozen=True)
class Period:
    name: str
    start: pd.Timestamp
    end: pd.Timestamp
    frame: pd.DataFrame  # model input columns
    y: np.ndarray


def month_starts(first: str, last: str, tz: str) -> list[pd.Timestamp]:
    """Local midnights of the first day of each month from ``first`` to ``last`` (YYYY-MM), inclusive."""
    start, stop = pd.Timestamp(f"{first}-01", tz=tz), pd.Timestamp(f"{last}-01", tz=tz)
    if stop < start:
        raise ConfigError(f"the replay ends ({last}) before it starts ({first})")
    out = [start]
    while out[-1] < stop:
        out.append(out[-1] + pd.DateOffset(months=1))
    return out


class Replay:
    """The dataset's history, read once, its months as periods, and a cache of fits and scores."""

    def __init__(self, config: PipelineConfig, *, first: str, last: str, history_start: str | None = None):
        self.config, self.dataset = config, config.dataset
        tz = config.schedule.timezone
        starts = month_starts(first, last, tz)
        ends = [*starts[1:], starts[-1] + pd.DateOffset(months=1)]
        begin = pd.Timestamp(history_start or config.schedule.start_date, tz=tz)
        raw = sources.read_window(self.dataset, begin.tz_convert("UTC"), ends[-1].tz_convert("UTC"))
        from pipelines.dataset import label_frame

        labelled, _ = label_frame(raw, self.dataset)
        time_col = self.dataset.time_column
        labelled[time_col] = pd.to_datetime(labelled[time_col], utc=True)
        self.history = labelled.sort_values(time_col, kind="stable").reset_index(drop=True)
        self.begin = begin.tz_convert("UTC")
        self.periods: list[Period] = []
        for start, end in zip(starts, ends, strict=True):
            rows = self._between(start.tz_convert("UTC"), end.tz_convert("UTC"))
            if len(rows) == 0:
                raise DataError(f"no labelled rows in {start:%Y-%m}: the replay needs data in every month")
            x, y = modeling.features_and_label(rows, self.dataset)
            self.periods.append(
                Period(f"{start:%Y-%m}", start.tz_convert("UTC"), end.tz_convert("UTC"), x, y)
            )
        self._fits: dict[tuple, Model] = {}
        self._scores: dict[tuple, np.ndarray] = {}

    def _between(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        times = self.history[self.dataset.time_column]
        lo, hi = times.searchsorted(start, side="left"), times.searchsorted(end, side="left")
        return self.history.iloc[lo:hi]

    def window(self, strategy: Strategy, until: pd.Timestamp) -> pd.DataFrame:
        """The training rows of ``strategy`` ending at ``until`` (counted in the dataset's timezone)."""
        if strategy.window_months is None:
            return self._between(self.begin, until)
        local = until.tz_convert(self.config.schedule.timezone)
        return self._between((local - pd.DateOffset(months=strategy.window_months)).tz_convert("UTC"), until)

    def fit(self, strategy: Strategy, until: pd.Timestamp, parent: Model | None = None) -> Model:
        """The model ``strategy`` trains on the window ending at ``until`` (stateful: from ``parent``)."""
        stateful_parent = parent if strategy.mode == "stateful" else None
        key = (strategy, until, stateful_parent.key if stateful_parent is not None else None)
        if key in self._fits:
            return self._fits[key]
        training = self.config.training
        frame = self.window(strategy, until)
        splits = modeling.split_window(frame, self.dataset, training)
        x_train, y_train = modeling.features_and_label(splits.train, self.dataset)
        x_val, y_val = modeling.features_and_label(splits.validation, self.dataset)
        x_test, y_test = modeling.features_and_label(splits.test, self.dataset)
        started = time.perf_counter()
        if stateful_parent is not None:
            model = modeling.continue_training(
                stateful_parent.pipeline, x_train, y_train, training.warm_start_iterations
            )
        else:
            model = modeling.build_pipeline(self.dataset, training).fit(x_train, y_train)
        seconds = time.perf_counter() - started
        threshold = modeling.best_f1_threshold(y_val, model.predict_proba(x_val)[:, 1])
        auc = _auc(y_test, model.predict_proba(x_test)[:, 1])
        positives = int(y_test.sum())
        sample = modeling.reference_sample(
            frame, self.dataset, model, self.config.monitoring.drift.reference_rows, training.random_state
        )
        rules = monitoring.column_rules(self.dataset, self.config.monitoring.drift)
        reference = drift.Reference.from_frame(
            sample, {c: r.kind for c, r in rules.items()}, self.config.monitoring.drift.psi_bins
        )
        profile = monitoring.training_profile(
            model, splits.test, self.dataset, threshold, training.random_state
        )
        fitted = Model(
            key, model, until, seconds, threshold, x_test, y_test,
            {"value": auc, "counts": [positives, len(y_test) - positives]}, reference, profile,
        )  # fmt: skip
        self._fits[key] = fitted
        log.info(
            "fit %s until %s: %d rows, %.1fs, test ROC AUC %.4f",
            strategy.label,
            until,
            len(frame),
            seconds,
            auc,
        )
        return fitted

    def proba(self, model: Model, i: int) -> np.ndarray:
        """The model's probabilities for period ``i`` (cached)."""
        key = (model.key, i)
        if key not in self._scores:
            self._scores[key] = model.pipeline.predict_proba(self.periods[i].frame)[:, 1]
        return self._scores[key]

    def auc(self, model: Model, i: int) -> float:
        """The model's live ROC AUC on period ``i`` (NaN with one class)."""
        return _auc(self.periods[i].y, self.proba(model, i))


def _auc(y: np.ndarray, proba: np.ndarray) -> float:
    return float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else math.nan
