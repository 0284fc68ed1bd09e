"""Score: the champion scores the validated batch in chunks, with progress; Parquet out.

The champion is resolved once, to a version number, before scoring starts: a
promotion during the run cannot mix two models in one output. Every output row
carries the model version and the threshold that made its prediction.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from pipelines import model_format, modeling, storage, tracking
from pipelines.context import StepContext
from pipelines.errors import ConfigError
from pipelines.results import ScoreInputs, ScoreResult, Skipped

log = logging.getLogger(__name__)


def run(ctx: StepContext, inputs: ScoreInputs) -> ScoreResult | Skipped:
    """Load the champion by version, score chunk by chunk, write predictions atomically."""
    import mlflow
    import mlflow.sklearn

    name, dataset = ctx.config.registry.model_name, ctx.config.dataset
    champion = tracking.champion_version(ctx.settings, name)
    if champion is None:
        raise ConfigError(f"{name} has no champion to score with: train and register a model first")
    version = str(champion.version)
    threshold = float(champion.tags.get("threshold", 0.5))
    model = model_format.load_uri(ctx.settings, f"models:/{name}/{version}")

    frame = storage.read_parquet(inputs["ingest_batch"]["snapshot_uri"])
    chunk = ctx.config.batch.chunk_rows
    total, started = len(frame), time.perf_counter()
    proba = np.empty(total)
    for i, lo in enumerate(range(0, total, chunk), 1):
        hi = min(lo + chunk, total)
        proba[lo:hi] = model.predict_proba(modeling.model_input(frame.iloc[lo:hi], dataset))[:, 1]
        log.info("scored %d/%d rows (%.0f%%), chunk %d, %.1fs", hi, total, 100 * hi / total, i,
                 time.perf_counter() - started)  # fmt: skip
    keep = list(dict.fromkeys([*dataset.key, dataset.time_column]))
    out = frame[keep].copy()
    out["probability"] = proba
    out["prediction"] = (proba >= threshold).astype("int8")
    out["model_name"], out["model_version"], out["threshold"] = name, version, threshold
    out["scored_at"] = pd.Timestamp.now(tz="UTC")
    uri = storage.write_parquet(storage.join(ctx.artifact_dir("score"), "predictions.parquet"), out)
    seconds = time.perf_counter() - started
    with tracking.pipeline_run(ctx, "score"):
        mlflow.log_metrics(
            {
                "batch_rows": total,
                "batch_positive_rate": float(out["prediction"].mean()),
                "batch_seconds": seconds,
            }
        )
        mlflow.set_tags({"batch.model_version": version, "batch.predictions_uri": uri})
    log.info("wrote %d predictions of %s v%s to %s in %.1fs", total, name, version, uri, seconds)
    return {
        "predictions_uri": uri,
        "rows": total,
        "model_name": name,
        "model_version": version,
        "positive_rate": float(out["prediction"].mean()),
        "seconds": round(seconds, 2),
    }
