"""Same verdicts as Evidently's DataDriftPreset on the real flights data (its large-sample defaults:
normalised Wasserstein for numbers, Jensen-Shannon for categories, both at 0.1)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines import drift, monitoring, sources
from pipelines.config import load_config
from pipelines.settings import DEFAULT_CONFIG


@pytest.fixture(scope="module")
def winter_and_july():
    config = load_config(DEFAULT_CONFIG)
    tz = config.schedule.timezone

    def window(start: str, end: str) -> pd.DataFrame:
        frame = sources.read_window(config.dataset, pd.Timestamp(start, tz=tz), pd.Timestamp(end, tz=tz))
        return frame[config.dataset.features.all]

    return config, window("2013-01-01", "2013-04-01"), window("2013-07-01", "2013-08-01")


def test_verdicts_and_scores_agree_with_evidently(winter_and_july):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    config, reference, current = winter_and_july
    features = config.dataset.features
    rules = {c: r for c, r in monitoring.column_rules(config.dataset, config.monitoring.drift).items()
             if c in features.all}  # fmt: skip
    ours = {
        r["column"]: r
        for r in drift.compare(
            drift.Reference.from_frame(reference, {c: r.kind for c, r in rules.items()}),
            current,
            rules,
            min_rows=1,
        )
    }
    definition = DataDefinition(numerical_columns=features.numeric, categorical_columns=features.categorical)
    snapshot = Report([DataDriftPreset()]).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    theirs = {}
    for metric in snapshot.dict()["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("ValueDrift"):
            theirs[cfg["column"]] = (cfg["method"], cfg["threshold"], metric["value"])
    assert set(theirs) == set(ours) == set(features.all)
    for column, (method, threshold, score) in theirs.items():
        mine = ours[column]
        assert threshold == mine["threshold"], column
        assert method.lower().startswith(
            {"wasserstein": "wasserstein", "jensenshannon": "jensen"}[mine["method"]]
        )
        assert mine["score"] == pytest.approx(score, rel=1e-6, abs=1e-9), column
        assert mine["drifted"] == (score >= threshold), column
    # and the real seasonal shift is there: July's weather is not January's
    assert ours["temp"]["drifted"] and ours["dewp"]["drifted"]
    assert not ours["carrier"]["drifted"]
