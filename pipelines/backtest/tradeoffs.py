"""The trade-off of each trigger: its precision and recall against realised harm, over its threshold."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipelines import monitoring
from pipelines.backtest.replay import Replay, Strategy
from pipelines.backtest.simulation import HARM_MARGIN, _window_frame
from pipelines.config import Monitoring

SCORES = {  # trigger -> (score in the report, threshold grid); the alarm is score >= threshold
    "importance-weighted drift": ("weighted_drift", np.round(np.arange(0.0, 0.61, 0.05), 2)),
    "unweighted drift share": ("drift_share", np.round(np.arange(0.0, 0.81, 0.05), 2)),
    "estimated AUC drop (CBPE)": ("estimated_drop", np.round(np.arange(-0.02, 0.061, 0.005), 3)),
    "realised AUC drop vs first month": ("decay_drop", np.round(np.arange(-0.02, 0.061, 0.005), 3)),
}


def panel(replay: Replay, strategy: Strategy, config: Monitoring) -> list[dict[str, Any]]:
    """Every stateless fit of ``strategy`` serving every later month: the triggers' scores and the harm."""
    periods, target = replay.periods, replay.dataset.target.name
    rows = []
    for b in range(len(periods) - 1):
        model = replay.fit(Strategy(strategy.window_months), periods[b].start)
        baseline = None
        for i in range(b, len(periods) - 1):
            proba = replay.proba(model, i)
            window = _window_frame(periods[i], proba, np.full(len(proba), "m", dtype=object), target)
            report = monitoring.detect(
                model.reference, window, dataset=replay.dataset, config=config, champion_version="m",
                training=model.test, profile=model.profile, baseline=baseline,
            )  # fmt: skip
            perf, est = report["performance"], report["estimated"]
            if perf.get("new_baseline"):
                baseline = perf["new_baseline"]
            fresh = replay.fit(Strategy(strategy.window_months), periods[i].end)
            rows.append(
                {
                    "trained_to": periods[b].name, "month": periods[i].name, "age": i - b,
                    "weighted_drift": report["drift"]["weighted_share"],
                    "drift_share": report["drift"]["share"],
                    "estimated_drop": est.get("drop"),
                    "decay_drop": perf.get("drop"),
                    "decay_p": perf.get("p_value"),
                    "auc_next": replay.auc(model, i + 1),
                    "fresh_auc_next": replay.auc(fresh, i + 1),
                    "harm": replay.auc(model, i + 1) < replay.auc(fresh, i + 1) - HARM_MARGIN,
                }
            )  # fmt: skip
    return rows


def tradeoff(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Precision and recall of each trigger against realised harm, over its threshold grid."""
    harms = sum(1 for r in rows if r["harm"])
    curves: dict[str, Any] = {}
    for name, (column, grid) in SCORES.items():
        points = []
        for threshold in grid:
            fired = [r for r in rows if r[column] is not None and r[column] >= threshold]
            hits = sum(1 for r in fired if r["harm"])
            precision = hits / len(fired) if fired else None
            recall = hits / harms if harms else None
            points.append(
                {
                    "threshold": float(threshold),
                    "alarms": len(fired),
                    "precision": precision,
                    "recall": recall,
                }
            )
        curves[name] = {"column": column, "points": points, "best": _best_point(points)}
    return {"situations": len(rows), "harmful": harms, "margin": HARM_MARGIN, "curves": curves}


def _best_point(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Precision and recall both >= 0.8 when the data allows (highest threshold); else the best F1."""
    scored = [p for p in points if p["precision"] is not None and p["recall"] is not None]
    good = [p for p in scored if p["precision"] >= 0.8 and p["recall"] >= 0.8]
    if good:
        return {**max(good, key=lambda p: p["threshold"]), "meets_target": True}

    def f1(p: dict[str, Any]) -> float:
        total = p["precision"] + p["recall"]
        return 2 * p["precision"] * p["recall"] / total if total else 0.0

    if not scored:
        return None
    best: dict[str, Any] = max(scored, key=f1)
    return {**best, "meets_target": False}
