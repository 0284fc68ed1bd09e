"""Monitoring: a window of traffic against the champion's training reference, and the decision.

``detect`` turns a reference sample and a current window into a report:
covariate drift per feature, prediction drift, label drift (once labels
exist) and live performance against the score recorded at training time.
``retrain_decision`` applies the policy: drift or decay asks for a retrain,
at most once per episode (cooldown, keyed by the serving champion). The
statistics are in ``pipelines.drift``; the steps ``detect_drift`` and
``decide_retrain`` call these functions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from pipelines import drift, modeling, prediction_log
from pipelines.config import Dataset, Drift, Monitoring, Performance, Retrain

log = logging.getLogger(__name__)

# Registered-model tag holding the last retrain request (JSON): the de-duplication state.
RETRAIN_TAG = "mlops.monitoring.last_retrain"
DRIFT = "drift"
DECAY = "decay"
OK = "ok"


def column_rules(dataset: Dataset, config: Drift) -> dict[str, drift.ColumnRule]:
    """The effective method and threshold of every monitored column (features, prediction, label)."""
    kinds = {c: "numeric" for c in dataset.features.numeric}
    kinds |= {c: "categorical" for c in dataset.features.categorical}
    kinds[modeling.PREDICTION_COLUMN] = "numeric"
    kinds[dataset.target.name] = "categorical"
    rules = {}
    for column, kind in kinds.items():
        override = config.columns.get(column)
        default = config.numeric_method if kind == "numeric" else config.categorical_method
        method = (override.method if override else None) or default
        threshold = (override.threshold if override else None) or config.thresholds.get(
            method, drift.DEFAULT_THRESHOLDS[method]
        )
        rules[column] = drift.ColumnRule(kind, method, threshold)
    unknown = set(config.columns) - set(rules)
    if unknown:
        from pipelines.errors import ConfigError

        raise ConfigError(f"monitoring.drift.columns names unknown columns {sorted(unknown)}")
    return rules


def window_frame(log_frame: pd.DataFrame, dataset: Dataset) -> pd.DataFrame:
    """Prediction-log rows (joined with feedback) as monitoring columns: features, prediction, label."""
    out = pd.DataFrame(index=log_frame.index)
    for column in dataset.features.all:
        source = prediction_log.INPUT_PREFIX + column
        out[column] = log_frame.get(source, np.nan)
    out[modeling.PREDICTION_COLUMN] = pd.to_numeric(log_frame["probability"], errors="coerce")
    label = log_frame["label"] if "label" in log_frame else pd.Series(np.nan, index=log_frame.index)
    out[dataset.target.name] = pd.to_numeric(label, errors="coerce")
    out["model_version"] = log_frame["model_version"].astype(str)
    out["route"] = log_frame["route"].astype(str)
    return out.reset_index(drop=True)


def _performance(
    current: pd.DataFrame, dataset: Dataset, config: Performance, training_score: float | None
) -> dict[str, Any]:
    labelled = current.dropna(subset=[dataset.target.name, modeling.PREDICTION_COLUMN])
    y = labelled[dataset.target.name].astype(int).to_numpy()
    result: dict[str, Any] = {
        "metric": config.metric,
        "labelled_rows": len(labelled),
        "training": training_score,
        "max_drop": config.max_drop,
        "min_labelled_rows": config.min_labelled_rows,
    }
    if len(labelled) < config.min_labelled_rows or len(np.unique(y)) < 2:
        reason = f"{len(labelled)} labelled rows (both classes needed); at least {config.min_labelled_rows}"
        return {**result, "status": drift.INSUFFICIENT, "live": None, "drop": None, "reason": reason}
    metrics = modeling.classification_metrics(y, labelled[modeling.PREDICTION_COLUMN].to_numpy(), 0.5)
    live = metrics[config.metric]
    drop = None if training_score is None else training_score - live
    decayed = drop is not None and drop > config.max_drop
    return {**result, "status": DECAY if decayed else OK, "live": live, "drop": drop}


def detect(
    reference: pd.DataFrame | drift.Reference,
    current: pd.DataFrame,
    *,
    dataset: Dataset,
    config: Monitoring,
    champion_version: str | None,
    training_score: float | None,
) -> dict[str, Any]:
    """The monitoring report of one window (JSON-ready).

    Inputs are judged on every row of the window; the prediction and performance only on the
    rows the champion answered (its reference is the one compared).
    """
    rules = column_rules(dataset, config.drift)
    if isinstance(reference, pd.DataFrame):
        reference = drift.Reference.from_frame(
            reference, {c: r.kind for c, r in rules.items()}, config.drift.psi_bins
        )
    served = current
    if champion_version is not None and "model_version" in current:
        served = current[current["model_version"] == str(champion_version)]
    min_rows = config.drift.min_rows
    features = drift.compare(reference, current, rules, min_rows=min_rows, columns=dataset.features.all)
    (prediction,) = drift.compare(
        reference, served, rules, min_rows=min_rows, columns=[modeling.PREDICTION_COLUMN]
    ) or [None]
    labelled = served.dropna(subset=[dataset.target.name])
    (label,) = drift.compare(
        reference, labelled, rules, min_rows=min_rows, columns=[dataset.target.name]
    ) or [None]
    share, drifted, judged = drift.drift_share(features)
    status = drift.INSUFFICIENT if share is None else DRIFT if share >= config.drift.share else OK
    drifted_features = [f["column"] for f in features if f["drifted"]]
    performance = _performance(served, dataset, config.performance, training_score)
    return {
        "champion_version": champion_version,
        "rows": {"window": len(current), "champion": len(served), "labelled": len(labelled)},
        "drift": {
            "status": status,
            "share": share,
            "drifted": drifted,
            "judged": judged,
            "threshold_share": config.drift.share,
            "drifted_features": drifted_features,
        },
        "features": features,
        "prediction": prediction,
        "label": label,
        "performance": performance,
    }


def retrain_decision(
    report: dict[str, Any],
    last_request: dict[str, Any] | None,
    config: Retrain,
    *,
    window_end: pd.Timestamp,
    run_id: str,
) -> dict[str, Any]:
    """Should this window ask for a retrain? One drift episode gives one retrain.

    An episode belongs to the serving champion: after a request, the same champion gets no
    second one until ``cooldown_hours`` of window time have passed (a retrain may still be
    running, or was rejected by the gate); a new champion starts a new episode. A retry of the
    same monitoring run repeats its own request.
    """
    reasons = []
    d, p = report["drift"], report["performance"]
    if config.on_drift and d["status"] == DRIFT:
        reasons.append(
            f"drift in {d['drifted']}/{d['judged']} features ({d['share']:.0%} >="
            f" {d['threshold_share']:.0%}): {', '.join(d['drifted_features'])}"
        )
    if config.on_decay and p["status"] == DECAY:
        reasons.append(
            f"live {p['metric']} {p['live']:.4f} is {p['drop']:.4f} below the {p['training']:.4f} at"
            f" training (allowed drop {p.get('max_drop')})"
        )
    if not reasons:
        why = []
        for name, part in (("drift", d), ("performance", p)):
            why.append(f"{name}: {part['status']}")
        return {"retrain": False, "reason": "no drift or decay to act on (" + "; ".join(why) + ")"}
    champion = report["champion_version"]
    if last_request and last_request.get("run_id") != run_id:
        same_champion = str(last_request.get("champion_version")) == str(champion)
        elapsed_h = (window_end - pd.Timestamp(last_request["requested_at"])).total_seconds() / 3600
        if same_champion and elapsed_h < config.cooldown_hours:
            return {
                "retrain": False,
                "reason": (
                    f"same episode: a retrain was already requested for champion v{champion} at"
                    f" {last_request['requested_at']} ({elapsed_h:.0f} h ago, cooldown"
                    f" {config.cooldown_hours:g} h)"
                ),
                "reasons": reasons,
            }
    return {"retrain": True, "reason": "; ".join(reasons), "reasons": reasons}


def last_request(tags: dict[str, str]) -> dict[str, Any] | None:
    """The de-duplication state from the registered model's tags (None if absent or unreadable)."""
    raw = tags.get(RETRAIN_TAG)
    if not raw:
        return None
    try:
        state = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring an unreadable %s tag: %r", RETRAIN_TAG, raw[:200])
        return None
    return state if isinstance(state, dict) and "requested_at" in state else None
