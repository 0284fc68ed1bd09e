"""The Models page's rendering: each model's facts where a person looks for them, a chart that plots them."""

from __future__ import annotations

import re

from pipelines import overview


def drift_result(end: str, share: float, live: float | None, estimated: float) -> dict:
    return {
        "champion_version": "1",
        "window": {"start": "x", "end": f"{end}T00:00:00-05:00"},
        "html_uri": f"/tmp/reports/{end}.html",
        "drift": {"share": share, "drifted_features": ["dewp"] if share > 0.2 else []},
        "performance": {"status": "ok", "live": live},
        "estimated": {"status": "ok", "roc_auc": estimated},
        "explanation": [f"drift {share}"],
    }


def test_a_model_with_verdicts_a_rollout_and_a_retrain():
    points = [
        overview.monitoring_point(drift_result("2013-05-01", 0.28, 0.70, 0.69), "m1"),
        overview.monitoring_point(drift_result("2013-06-01", 0.10, None, 0.71), "m2"),
    ]
    model = overview.ModelOverview(
        name="flights-delay", config_file="/models/flights.yaml",
        dag_ids={"training": "training", "deploy": "deploy", "monitoring": "monitoring"},
        champion="3", challenger="4", monitoring=points,
        rollout={"run_id": "d1", "status": "waiting", "decision": None, "reason": "collecting",
                 "version": "4", "sample_size": 1500, "labelled_champion": 200, "labelled_challenger": 25},
        last_retrain={"run_id": "t9", "state": "success", "start": "2013-06-02 00:00",
                      "why": overview.retrain_reason({"source": "monitoring", "interval_end": "2013-05-01",
                                                      "drift_share": 0.28, "drifted_features": ["dewp"],
                                                      "performance": {"status": "ok"}})},
    )  # fmt: skip
    broken = overview.ModelOverview(
        name="churn", config_file="/models/churn.yaml", error="gate.min_value: not a number"
    )
    html = overview.render([model, broken], airflow_url="http://af/", mlflow_url="http://mlflow:5000")
    assert '<a href="http://mlflow:5000/#/models/flights-delay/versions/3">v3</a>' in html
    assert (
        'href="http://af/dags/monitoring/runs/m2"' in html and 'href="http://af/dags/deploy/runs/d1"' in html
    )
    assert "last window to <b>2013-06-01</b>" in html and "drift share <b>0.10</b>" in html
    assert "<td>1500 needed</td>" in html and "<td>200</td><td>25</td>" in html
    assert "monitoring of the window to 2013-05-01: drift share 0.28, drifted dewp" in html
    assert "This config does not load, so the model has no DAGs: gate.min_value: not a number" in html
    # the chart: two windows, drift share 0.28 then 0.10 (higher on the page = larger value)
    drift = re.search(r'<polyline class="drift_share"[^>]*points="([^"]+)"', html).group(1)
    (x1, y1), (x2, y2) = [tuple(map(float, p.split(","))) for p in drift.split()]
    assert x1 < x2 and y1 < y2
    live = re.search(r'<polyline class="live"[^>]*points="([^"]*)"', html).group(1)
    assert len(live.split()) == 1  # the window without labels has no live point


def test_an_empty_model_says_what_has_not_happened_yet():
    model = overview.ModelOverview(
        name="car-loan", config_file="c.yaml", dag_ids={"training": "t", "deploy": "d", "monitoring": "m"}
    )
    html = overview.render([model], airflow_url="http://af", mlflow_url=None)
    for text in ("no deploy run yet", "no monitoring run yet", "no training run yet"):
        assert text in html
    assert '<span class="muted">none</span>' in html  # no champion, and no MLflow link without a UI


def test_a_direct_rollout_has_no_version_or_sample_and_still_shows():
    """The first champion's rollout is direct: its result is status, decision and reason only."""
    model = overview.ModelOverview(
        name="m", config_file="c.yaml", dag_ids={"training": "t", "deploy": "d", "monitoring": "mo"},
        rollout={"run_id": "d1", "status": "decided", "decision": "promote", "reason": "no champion yet"},
    )  # fmt: skip
    html = overview.render([model], airflow_url="http://af", mlflow_url=None)
    assert "<b>decided</b>, promote" in html and "no champion yet" in html and "<td>- needed</td>" in html
