"""Monitoring: a window of traffic against the champion's training reference, and the decision.

``detect`` turns a reference sample and a current window into a report:
covariate drift per feature (and its share weighted by the champion's
permutation importances), prediction drift, label drift (once labels exist),
live performance against a fair baseline (the first window the champion answered most of)
with a significance test, and the performance estimated before labels from
the calibrated probabilities (CBPE, ``pipelines.estimation``).
``retrain_decision`` applies the policy: each enabled trigger may ask for a
retrain, at most once per episode (cooldown, keyed by the serving champion),
or only notify. ``training_profile`` (in ``pipelines.monitoring_profile``) is what training
stores for all this.
The statistics are in ``pipelines.drift``; the steps ``detect_drift`` and
``decide_retrain`` call these functions, and ``pipelines.backtest`` replays
them month by month to choose the policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from pipelines import drift, estimation, modeling, prediction_log
from pipelines.config import Dataset, Drift, Monitoring, Performance, Retrain
from pipelines.monitoring_profile import training_profile  # noqa: F401  (callers use monitoring.X)
from pipelines.serving.policy import SHADOW_ROUTE

log = logging.getLogger(__name__)

# Registered-model tag holding the last retrain request (JSON): the de-duplication state.
RETRAIN_TAG = "mlops.monitoring.last_retrain"
DRIFT = "drift"
DECAY = "decay"
OK = "ok"


def column_rules(dataset: Dataset, config: Drift) -> dict[str, drift.ColumnRule]:
    """The effective method and threshold of every monitored column (features, prediction, label)."""
    kinds: dict[str, Literal["numeric", "categorical"]] = {c: "numeric" for c in dataset.features.numeric}
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


def _counts(y: np.ndarray) -> tuple[int, int]:
    positives = int(y.sum())
    return positives, len(y) - positives


def _performance(
    current: pd.DataFrame,
    dataset: Dataset,
    config: Performance,
    training: dict[str, Any] | None,
    baseline: dict[str, Any] | None,
    served_share: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Realised live performance against the baseline: a drop that is large and significant is decay.

    ``training``: the champion's test score and its (positives, negatives); ``baseline``: its
    live score in the first window it answered most of (None until that window has been judged);
    ``served_share``: the champion's share of the window's traffic.
    """
    labelled = current.dropna(subset=[dataset.target.name, modeling.PREDICTION_COLUMN])
    y = labelled[dataset.target.name].astype(int).to_numpy()
    training_score = (training or {}).get("value")
    result: dict[str, Any] = {
        "metric": config.metric,
        "labelled_rows": len(labelled),
        "training": training_score,
        "baseline_kind": config.baseline,
        "max_drop": config.max_drop,
        "alpha": config.alpha,
        "min_labelled_rows": config.min_labelled_rows,
        "served_share": served_share,
    }
    if len(labelled) < config.min_labelled_rows or len(np.unique(y)) < 2:
        reason = f"{len(labelled)} labelled rows (both classes needed); at least {config.min_labelled_rows}"
        return {**result, "status": drift.INSUFFICIENT, "live": None, "drop": None, "reason": reason}
    metrics = modeling.classification_metrics(y, labelled[modeling.PREDICTION_COLUMN].to_numpy(), 0.5)
    live, counts = metrics[config.metric], _counts(y)
    result |= {"live": live, "counts": list(counts)}
    against = training if config.baseline == "test" else baseline
    if not against or against.get("value") is None:
        if served_share is not None and served_share < config.baseline_min_served_share:
            reason = (
                f"v{version} answered {served_share:.0%} of the window (a rollout was under way): its"
                f" baseline waits for a window in which it answers >= {config.baseline_min_served_share:.0%}"
            )
            return {**result, "status": OK, "drop": None, "baseline": None, "reason": reason}
        # the first window this champion served (most of) becomes its baseline; nothing to compare yet
        return {
            **result, "status": OK, "drop": None, "baseline": None,
            "new_baseline": {"value": live, "counts": list(counts)},
            "reason": f"first window it answered most of: live {config.metric} {live:.4f} is the baseline",
        }  # fmt: skip
    test = estimation.auc_drop(against["value"], tuple(against["counts"]), live, counts)
    decayed = test["drop"] > config.max_drop and test["p_value"] < config.alpha
    return {**result, "status": DECAY if decayed else OK, "baseline": against["value"], **test}


def _estimated(
    served: pd.DataFrame, profile: dict[str, Any] | None, config: Performance, baseline: dict[str, Any] | None
) -> dict[str, Any]:
    """The live ROC AUC and error rate expected from the champion's calibrated probabilities (CBPE).

    Needs no label. Compared with the estimate of the baseline window (or, before one exists,
    of the champion's test split) to say whether the inputs moved where the model is weaker.
    """
    if not profile or not profile.get("calibration"):
        return {
            "status": "unavailable",
            "reason": "the champion has no calibration map (trained before CBPE)",
        }
    proba = pd.to_numeric(served[modeling.PREDICTION_COLUMN], errors="coerce").dropna().to_numpy()
    if len(proba) < config.min_labelled_rows:
        reason = f"{len(proba)} answered rows; at least {config.min_labelled_rows}"
        return {"status": drift.INSUFFICIENT, "roc_auc": None, "reason": reason}
    calibrated = estimation.Calibration.from_dict(profile["calibration"])(proba)
    value = estimation.expected_roc_auc(calibrated)
    reference = (baseline or {}).get("estimated", profile.get("estimated_test_roc_auc"))
    drop = None if value is None or reference is None else reference - value
    decayed = drop is not None and drop > config.max_estimated_drop
    return {
        "status": DECAY if decayed else OK,
        "roc_auc": value,
        "error_rate": estimation.expected_error_rate(calibrated, profile.get("threshold", 0.5)),
        "reference": reference,
        "drop": drop,
        "max_drop": config.max_estimated_drop,
    }


def detect(
    reference: pd.DataFrame | drift.Reference,
    current: pd.DataFrame,
    *,
    dataset: Dataset,
    config: Monitoring,
    champion_version: str | None,
    training: dict[str, Any] | None,
    profile: dict[str, Any] | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The monitoring report of one window (JSON-ready).

    Inputs are judged on every row of the window; the prediction and performance only on the
    rows the champion answered (its reference is the one compared). ``profile`` is what training
    stored for monitoring (feature importances, calibration map); ``baseline`` the champion's
    score in the first window it answered most of.
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
    ) or (None,)
    labelled = served.dropna(subset=[dataset.target.name])
    (label,) = drift.compare(
        reference, labelled, rules, min_rows=min_rows, columns=[dataset.target.name]
    ) or (None,)
    share, drifted, judged = drift.drift_share(features)
    importances = (profile or {}).get("importances") or {}
    weighted = drift.weighted_share(features, importances) if importances else None
    by_importance = config.drift.weighting == "importance" and weighted is not None
    for f in features:
        f["importance"] = importances.get(f["column"])
    decisive = weighted if by_importance else share
    status = drift.INSUFFICIENT if decisive is None else DRIFT if decisive >= config.drift.share else OK
    drifted_features = [f["column"] for f in features if f["drifted"]]
    traffic = current[current["route"] != SHADOW_ROUTE] if "route" in current else current
    served_share = len(served) / len(traffic) if len(traffic) else None
    performance = _performance(
        served, dataset, config.performance, training, baseline, served_share, champion_version
    )
    estimated = _estimated(served, profile, config.performance, baseline)
    if performance.get("new_baseline") and estimated.get("roc_auc") is not None:
        performance["new_baseline"]["estimated"] = estimated["roc_auc"]
    if estimated.get("roc_auc") is not None and performance.get("live") is not None:
        estimated["realised"] = performance["live"]
        estimated["error"] = estimated["roc_auc"] - performance["live"]
    return {
        "champion_version": champion_version,
        "rows": {"window": len(current), "champion": len(served), "labelled": len(labelled)},
        "drift": {
            "status": status,
            "share": share,
            "weighted_share": weighted,
            "weighting": "importance" if by_importance else "none",
            "drifted": drifted,
            "judged": judged,
            "threshold_share": config.drift.share,
            "drifted_features": drifted_features,
        },
        "features": features,
        "prediction": prediction,
        "label": label,
        "performance": performance,
        "estimated": estimated,
    }


def _drift_reason(d: dict[str, Any]) -> str:
    names = ", ".join(d["drifted_features"]) or "none"
    if d.get("weighting") == "importance":
        return (
            f"importance-weighted drift {d['weighted_share']:.2f} {'>=' if d['status'] == DRIFT else '<'}"
            f" {d['threshold_share']:.2f} ({d['drifted']}/{d['judged']} features drifted: {names})"
        )
    return (
        f"drift in {d['drifted']}/{d['judged']} features ({d['share']:.0%}"
        f" {'>=' if d['status'] == DRIFT else '<'} {d['threshold_share']:.0%}): {names}"
    )


def _decay_reason(p: dict[str, Any]) -> str:
    if p.get("live") is None:
        return f"performance: {p.get('reason', p['status'])}"
    if p.get("baseline") is None:
        return p.get("reason", "no baseline")
    verdict = "decay" if p["status"] == DECAY else "no decay"
    return (
        f"{verdict}: live {p['metric']} {p['live']:.4f} vs baseline {p['baseline']:.4f}"
        f" ({p['baseline_kind']}), drop {p['drop']:+.4f} (allowed {p['max_drop']}), p={p['p_value']:.3f}"
        f" (alpha {p['alpha']})"
    )


def _estimate_reason(e: dict[str, Any]) -> str:
    if e.get("roc_auc") is None:
        return f"estimate: {e.get('reason', e['status'])}"
    if e.get("drop") is None:
        return f"estimated {e['roc_auc']:.4f}"
    return (
        f"estimated ROC AUC {e['roc_auc']:.4f} vs {e['reference']:.4f}, drop {e['drop']:+.4f}"
        f" ({'>' if e['status'] == DECAY else '<='} {e['max_drop']})"
    )


def explain(report: Mapping[str, Any]) -> list[str]:
    """One line per trigger: what it saw and whether that fires (the reasons a person reads)."""
    lines = []
    d = report["drift"]
    lines.append(_drift_reason(d) if d["status"] != drift.INSUFFICIENT else "drift: insufficient data")
    lines.append(_decay_reason(report["performance"]))
    if "estimated" in report:
        lines.append(_estimate_reason(report["estimated"]))
    return lines


def retrain_decision(
    report: Mapping[str, Any],
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
    same monitoring run repeats its own request. In ``notify`` mode the reasons are reported
    and nothing is requested.
    """
    reasons = []
    d, p = report["drift"], report["performance"]
    e = report.get("estimated") or {}
    if config.on_drift and d["status"] == DRIFT:
        reasons.append(_drift_reason(d))
    if config.on_decay and p["status"] == DECAY:
        reasons.append(_decay_reason(p))
    if config.on_estimated_decay and e.get("status") == DECAY:
        reasons.append(_estimate_reason(e))
    seen = "; ".join(explain(report))
    if not reasons:
        return {"retrain": False, "reason": f"no trigger fired ({seen})", "reasons": []}
    if config.mode == "notify":
        return {
            "retrain": False,
            "notify": True,
            "reason": "notify only (monitoring.retrain.mode): " + "; ".join(reasons),
            "reasons": reasons,
        }
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


BASELINE_TAG = "monitoring.baseline"


def training_score(tags: dict[str, str], metric: str) -> dict[str, Any] | None:
    """The champion's test score and its test split's (positives, negatives), from its tags."""
    value, rows, rate = (tags.get(f"test.{k}") for k in (metric, "rows", "positive_rate"))
    if value is None:
        return None
    counts = None
    if rows and rate:
        positives = round(float(rows) * float(rate))
        counts = [positives, round(float(rows)) - positives]
    return {"value": float(value), "counts": counts or [0, 0]}


def baseline(tags: dict[str, str]) -> dict[str, Any] | None:
    """The champion's live baseline window (value, counts, estimate), from its version's tag."""
    raw = tags.get(BASELINE_TAG)
    if not raw:
        return None
    try:
        found = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("ignoring an unreadable %s tag: %r", BASELINE_TAG, raw[:200])
        return None
    return found if isinstance(found, dict) and "value" in found else None


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
