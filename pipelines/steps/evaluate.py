"""Evaluate: the candidate and the current champion on the same test set, then the gate.

Writes ``evaluation.json`` (metrics overall and by slice, calibration, the gate
decision) and ``comparison.html`` (with ROC, PR and calibration curves) to the
artifact store and to the pipeline's MLflow run.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipelines import audit, gate, model_format, modeling, reports, storage, tracking
from pipelines.context import StepContext
from pipelines.results import EvaluateInputs, EvaluateResult, Skipped

log = logging.getLogger(__name__)
MIN_SLICE_ROWS = 100
SUMMARY_METRICS = ("roc_auc", "pr_auc", "log_loss", "f1", "brier")  # what the result (XCom) carries


def slice_metrics(
    test: pd.DataFrame, y: np.ndarray, scores: dict[str, np.ndarray], columns: list[str]
) -> dict[str, dict[str, Any]]:
    """Rows, positive rate and ROC AUC per model for each value of each slice column.

    Values with fewer than ``MIN_SLICE_ROWS`` rows (or one class only) are listed with no score.
    """
    out: dict[str, dict[str, Any]] = {}
    for column in columns:
        if column not in test.columns:
            continue
        table = {}
        values = test[column].astype("string").fillna("<missing>").to_numpy()
        for value in sorted(set(values)):
            sel = values == value
            both = len(np.unique(y[sel])) == 2 and sel.sum() >= MIN_SLICE_ROWS
            table[str(value)] = {
                "rows": int(sel.sum()),
                "positive_rate": float(y[sel].mean()),
                "roc_auc": {
                    name: (float(roc_auc_score(y[sel], p[sel])) if both else None)
                    for name, p in scores.items()
                },
            }
        out[column] = table
    return out


def _overlap(version, test_start: pd.Timestamp) -> str | None:
    """Why the champion cannot be compared on this test set (it trained on part of it), or None.

    Happens when a backfill or a manual run trains on an earlier window than the champion's.
    """
    trained_until = version.tags.get("data.window_end")
    if trained_until and pd.Timestamp(trained_until) > test_start:
        return (
            f"champion v{version.version} was trained on data up to {trained_until}, "
            f"after this test set starts ({test_start.isoformat()})"
        )
    return None


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in SUMMARY_METRICS}


def run(ctx: StepContext, inputs: EvaluateInputs) -> EvaluateResult | Skipped:
    """Score candidate and champion on the test split, decide, report."""
    import mlflow

    trained = inputs["train"]
    dataset = ctx.config.dataset
    test = storage.read_parquet(trained["test_uri"])
    x_test, y_test = modeling.features_and_label(test, dataset)

    candidate = model_format.load_uri(ctx.settings, trained["model_uri"], trained.get("model_sha256"))
    scores = {"candidate": candidate.predict_proba(x_test)[:, 1]}
    candidate_metrics = modeling.classification_metrics(y_test, scores["candidate"], trained["threshold"])

    champion, not_comparable = None, None
    version = tracking.champion_version(ctx.settings, ctx.config.registry.model_name)
    if version is not None:
        not_comparable = _overlap(version, test[dataset.time_column].min())
        champion_model = model_format.load_uri(ctx.settings, f"models:/{version.name}/{version.version}")
        scores["champion"] = champion_model.predict_proba(x_test)[:, 1]
        threshold = float(version.tags.get("threshold", 0.5))
        champion = {
            "version": str(version.version),
            "run_id": version.run_id,
            "metrics": modeling.classification_metrics(y_test, scores["champion"], threshold),
        }

    slices = slice_metrics(test, y_test, scores, dataset.slices)
    fairness = gate.slice_gaps(ctx.config.gate.slices, slices)
    decision = gate.decide(
        ctx.config.gate, candidate_metrics, champion and champion["metrics"], not_comparable, fairness
    )
    evaluation = {
        "run_key": ctx.run_key,
        "data_hash": trained["data_hash"],
        "candidate": {"model_uri": trained["model_uri"], "metrics": candidate_metrics},
        "champion": champion,
        "slices": slices,
        "fairness": fairness,
        "calibration": modeling.calibration_bins(y_test, scores["candidate"]),
        "decision": decision,
    }
    page, png = reports.render_evaluation(
        evaluation, {name: {"y": y_test, "proba": p} for name, p in scores.items()}
    )
    out_dir = ctx.artifact_dir("evaluate")
    json_uri = storage.write_json(storage.join(out_dir, "evaluation.json"), evaluation)
    html_uri = storage.write_text(storage.join(out_dir, "comparison.html"), page)
    storage.write_bytes(storage.join(out_dir, "comparison.png"), png)

    with tracking.pipeline_run(ctx, "evaluate"):
        mlflow.log_metrics({f"test_{k}": v for k, v in candidate_metrics.items() if isinstance(v, float)})
        if champion:
            mlflow.log_metrics(
                {f"champion_test_{k}": v for k, v in champion["metrics"].items() if isinstance(v, float)}
            )
        mlflow.set_tags(
            {"gate.passed": str(decision["passed"]).lower(), "gate.reason": decision["reason"][:500]}
        )
        mlflow.log_dict(evaluation, "evaluation/evaluation.json")
        mlflow.log_text(page, "evaluation/comparison.html")

    audit.record_step(
        ctx, audit.GATE_DECIDED, key=trained["mlflow_run_id"],
        decision="passed" if decision["passed"] else "rejected", reason=decision["reason"],
        approval_reason=decision["approval_reason"], fairness_passed=fairness["passed"],
        champion_version=champion and champion["version"], data_hash=trained["data_hash"],
        metrics=_summary(candidate_metrics),
    )  # fmt: skip
    log.info("gate %s: %s", "passed" if decision["passed"] else "REJECTED", decision["reason"])
    return {
        "passed": decision["passed"],
        "reason": decision["reason"],
        "approval_required": decision["approval_required"],
        "approval_reason": decision["approval_reason"],
        "fairness_passed": fairness["passed"],
        "metrics": _summary(candidate_metrics),
        "champion_version": champion["version"] if champion else None,
        "champion_metrics": _summary(champion["metrics"]) if champion else None,
        "evaluation_uri": json_uri,
        "report_uri": html_uri,
    }
