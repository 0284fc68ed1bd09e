"""Continual training: stateful retraining continues the champion; the result is a plain model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from pipelines import modeling
from pipelines.config import Training, load_config
from pipelines.settings import DEFAULT_CONFIG


@pytest.fixture(scope="module")
def months(flights_frame):
    config = load_config(DEFAULT_CONFIG)
    frame = flights_frame.dropna(subset=["arr_delay"]).copy()
    frame["late"] = frame["arr_delay"] > 15
    month = pd.to_datetime(frame["time_hour"], utc=True).dt.month
    return config.dataset, frame[month == 1], frame[month == 3]


@pytest.mark.parametrize("estimator", ["hist_gradient_boosting", "logistic_regression"])
def test_stateful_training_continues_the_champion(months, estimator):
    import skops.io

    dataset, january, march = months
    training = Training(estimator=estimator)
    x_old, y_old = modeling.features_and_label(january, dataset)
    x_new, y_new = modeling.features_and_label(march, dataset)
    champion = modeling.build_pipeline(dataset, training).fit(x_old, y_old)
    before = champion.predict_proba(x_new)[:, 1]

    continued = modeling.continue_training(champion, x_new, y_new, iterations=30)

    # the champion itself is untouched; the continued model answers differently on the new month
    assert np.array_equal(champion.predict_proba(x_new)[:, 1], before)
    assert not np.allclose(continued.predict_proba(x_new)[:, 1], before)
    # the preprocessing is the champion's own (not refitted on the new window)
    old_pre, new_pre = champion.named_steps["preprocess"], continued.named_steps["preprocess"]
    dense = [np.asarray(getattr(t, "toarray", lambda t=t: t)(), dtype=float) for t in
             (old_pre.transform(x_new), new_pre.transform(x_new))]  # fmt: skip
    assert np.array_equal(*dense, equal_nan=True)
    old, new = champion.named_steps["model"], continued.named_steps["model"]
    if estimator == "hist_gradient_boosting":
        assert new.n_iter_ > old.n_iter_
        assert type(new) is HistGradientBoostingClassifier  # saved models never name a private class
        # the champion's trees are kept: the first iterations predict exactly as before
        assert all(
            np.array_equal(a[0].nodes, b[0].nodes)
            for a, b in zip(old._predictors, new._predictors, strict=False)
        )
    assert new.get_params()["warm_start"] is False
    # it serialises with skops like any trained model
    assert skops.io.loads(
        skops.io.dumps(continued), trusted=skops.io.get_untrusted_types(data=skops.io.dumps(continued))
    )


def test_continued_boosting_bins_new_data_with_the_champions_edges(months):
    dataset, january, march = months
    x_old, y_old = modeling.features_and_label(january, dataset)
    x_new, y_new = modeling.features_and_label(march, dataset)
    champion = modeling.build_pipeline(dataset, Training()).fit(x_old, y_old)
    edges = [e.copy() for e in champion.named_steps["model"]._bin_mapper.bin_thresholds_]
    continued = modeling.continue_training(champion, x_new, y_new, iterations=10)
    kept = continued.named_steps["model"]._bin_mapper.bin_thresholds_
    assert all(np.array_equal(a, b) for a, b in zip(edges, kept, strict=True))
