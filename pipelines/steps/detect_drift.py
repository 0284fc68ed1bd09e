"""Detect drift: one window against the champion's training reference; JSON and HTML report.

The window is the run's data interval. Its rows come from the prediction log
(the server's traffic, joined with the feedback labels that arrived so far) or,
with ``monitoring.source: batch``, from the source data of the interval scored
by the champion. The reference is the sample of training rows that the train
step stored with the champion. The report goes to the run's artifact folder
and to MLflow (experiment ``<experiment>-monitoring``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from pipelines import (
    feature_store,
    model_format,
    modeling,
    monitoring,
    prediction_log,
    reports,
    sources,
    storage,
    tracking,
)
from pipelines.context import StepContext
from pipelines.errors import ConfigError
from pipelines.pipeline import skipped
from pipelines.results import DetectDriftResult, NoInputs, Skipped

log = logging.getLogger(__name__)


def _traffic(ctx: StepContext) -> pd.DataFrame:
    name = ctx.config.registry.model_name
    store = prediction_log.open_log(ctx.settings, name, writer=False)
    try:
        frame = store.read(ctx.interval_start, ctx.interval_end, clock=ctx.config.monitoring.clock)
        # a label arrives after its prediction: labels from the window's first answer on
        since = frame["ts"].min() if not frame.empty else None
        frame = prediction_log.with_feedback(frame, store.read_feedback(since=since))
    finally:
        store.close()
    return monitoring.window_frame(frame, ctx.config.dataset)


def _batch(ctx: StepContext, model, version: str) -> pd.DataFrame:
    """The interval's source rows scored by the champion; the label where the source has it."""
    from pipelines.dataset import label_frame

    dataset = ctx.config.dataset
    raw = sources.read_window(dataset, ctx.interval_start, ctx.interval_end)
    raw = feature_store.with_store_features(ctx.settings, dataset, raw, ctx.interval_end)
    out = modeling.model_input(raw, dataset) if len(raw) else pd.DataFrame(columns=dataset.features.all)
    out[modeling.PREDICTION_COLUMN] = model.predict_proba(out)[:, 1] if len(out) else []
    out[dataset.target.name] = float("nan")
    if len(raw) and all(c in raw for c in dataset.target.required):
        labelled, _ = label_frame(raw.copy(), ctx.config.dataset)
        out.loc[labelled.index, dataset.target.name] = labelled[dataset.target.name].astype(float)
    out["model_version"], out["route"] = version, "batch"
    return out.reset_index(drop=True)


def _profile(tags: dict[str, str]) -> dict[str, Any] | None:
    """Importances and calibration stored at training (None for a model trained before they were)."""
    uri = tags.get("monitoring_profile_uri")
    return storage.read_json(uri) if uri else None


def run(ctx: StepContext, inputs: NoInputs) -> DetectDriftResult | Skipped:
    """Compare the window with the reference; write drift.json and drift.html; log to MLflow."""
    import mlflow

    config, dataset = ctx.config.monitoring, ctx.config.dataset
    if config.source == "batch":  # the dataset's rows; the prediction log holds whatever traffic came
        ctx.check_window()
    name = ctx.config.registry.model_name
    champion = tracking.champion_version(ctx.settings, name)
    if champion is None:
        return skipped(f"{name} has no champion: nothing is served, nothing to monitor")
    version = str(champion.version)
    reference_uri = champion.tags.get("reference_uri")
    if not reference_uri:
        raise ConfigError(
            f"{name} v{version} has no drift reference (tag reference_uri): it was trained before"
            " monitoring existed; retrain it once"
        )
    started = time.perf_counter()
    reference = storage.read_parquet(reference_uri)
    if config.source == "batch":
        current = _batch(ctx, model_format.load_uri(ctx.settings, f"models:/{name}/{version}"), version)
    else:
        current = _traffic(ctx)
    log.info(
        "monitoring %s v%s: %d rows in [%s, %s) (%s, clock %s) against %d reference rows",
        name, version, len(current), ctx.interval_start, ctx.interval_end, config.source, config.clock,
        len(reference),
    )  # fmt: skip
    report = monitoring.detect(
        reference,
        current,
        dataset=dataset,
        config=config,
        champion_version=version,
        training=monitoring.training_score(champion.tags, config.performance.metric),
        profile=_profile(champion.tags),
        baseline=monitoring.baseline(champion.tags),
    )
    report = {
        "model_name": name,
        "window": {
            "start": ctx.interval_start.isoformat(),
            "end": ctx.interval_end.isoformat(),
            "clock": config.clock,
            "source": config.source,
        },
        "reference_uri": reference_uri,
        **report,
        "seconds": round(time.perf_counter() - started, 3),
    }
    out_dir = ctx.artifact_dir("detect_drift")
    report_uri = storage.write_json(storage.join(out_dir, "drift.json"), report)
    html_uri = storage.write_text(
        storage.join(out_dir, "drift.html"), reports.drift_html(report, reference, current, dataset)
    )
    d, p = report["drift"], report["performance"]
    experiment = f"{ctx.config.registry.experiment}-monitoring"
    with tracking.pipeline_run(ctx, "detect_drift", experiment=experiment):
        metrics = {"rows": len(current), "labelled_rows": report["rows"]["labelled"]}
        if d["share"] is not None:
            metrics |= {"drift_share": d["share"], "drifted_features": d["drifted"]}
        if p["live"] is not None:
            metrics[f"live_{p['metric']}"] = p["live"]
        if report["estimated"].get("roc_auc") is not None:
            metrics["estimated_roc_auc"] = report["estimated"]["roc_auc"]
        if d.get("weighted_share") is not None:
            metrics["drift_weighted_share"] = d["weighted_share"]
        for f in report["features"]:
            if f["score"] is not None:
                metrics[f"drift.{f['column']}.{f['method']}"] = f["score"]
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "monitoring.model_version": version,
                "monitoring.drift": d["status"],
                "monitoring.performance": p["status"],
                "monitoring.report_uri": report_uri,
            }
        )
        mlflow.log_dict(report, "drift.json")
        mlflow.log_text(storage.read_bytes(html_uri).decode(), "drift.html")
    log.info(
        "drift: %s (%s of judged features: %s); performance: %s (live %s vs %s at training)",
        d["status"], "n/a" if d["share"] is None else f"{d['share']:.0%}",
        ", ".join(d["drifted_features"]) or "none", p["status"], p["live"], p["training"],
    )  # fmt: skip
    return {
        "model_name": name,
        "champion_version": version,
        "window": report["window"],
        "report_uri": report_uri,
        "html_uri": html_uri,
        "rows": report["rows"],
        "drift": d,
        "performance": p,
        "estimated": report["estimated"],
        "explanation": monitoring.explain(report),
        "prediction_drift": (report["prediction"] or {}).get("status"),
        "label_drift": (report["label"] or {}).get("status"),
    }
