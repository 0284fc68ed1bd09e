"""Train: time-ordered split, the configured Pipeline, an optional small search, one MLflow model.

The decision threshold is the one that maximises F1 on the validation split.
The test split and the training data's reference profile are written to the
artifact store for evaluate, validate (next runs) and monitoring.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterSampler

from pipelines import model_format, modeling, monitoring, storage, tracking
from pipelines.context import StepContext
from pipelines.results import Skipped, TrainingMode, TrainInputs, TrainResult

log = logging.getLogger(__name__)


def _search(ctx: StepContext, x_train, y_train, x_val, y_val) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Random search over the configured space, each candidate scored on the validation split."""
    import mlflow

    training, dataset = ctx.config.training, ctx.config.dataset
    space = {k: v for k, v in training.search.space.items() if k in _tunable(ctx)}
    candidates = list(
        ParameterSampler(space, n_iter=training.search.n_iter, random_state=training.random_state)
    )
    trials = []
    for i, params in enumerate(candidates, 1):
        model = modeling.build_pipeline(dataset, training, params).fit(x_train, y_train)
        auc = modeling.classification_metrics(y_val, model.predict_proba(x_val)[:, 1], 0.5)["roc_auc"]
        trials.append({"params": params, "validation_roc_auc": auc})
        with mlflow.start_run(run_name=f"search-{i}", nested=True):
            mlflow.log_params(params)
            mlflow.log_metric("validation_roc_auc", auc or float("nan"))
        log.info("search %d/%d: %s -> validation ROC AUC %.4f", i, len(candidates), params, auc or 0)
    best = max(trials, key=lambda t: t["validation_roc_auc"] or -1.0)
    return best["params"], trials


def _tunable(ctx: StepContext) -> set[str]:
    probe = modeling.build_pipeline(ctx.config.dataset, ctx.config.training)
    return set(probe.named_steps["model"].get_params())


def _champion_to_continue(ctx: StepContext):
    """(version, fitted pipeline) of the champion in stateful mode; None means train from scratch."""
    training = ctx.config.training
    if training.mode != "stateful" or training.shuffle_labels:
        return None
    name = ctx.config.registry.model_name
    champion = tracking.champion_version(ctx.settings, name)
    if champion is None:
        log.info("stateful training asked for, but there is no champion yet: training from scratch")
        return None
    base = model_format.load_uri(ctx.settings, f"models:/{name}/{champion.version}")
    if type(base.named_steps["model"]).__name__ != modeling.ESTIMATOR_CLASSES[training.estimator]:
        log.info("the champion is not a %s: training from scratch", training.estimator)
        return None
    return str(champion.version), base


def run(ctx: StepContext, inputs: TrainInputs) -> TrainResult | Skipped:
    """Fit the model on the snapshot of ``inputs['ingest']`` and log it to MLflow."""
    import mlflow

    snapshot_info = inputs["ingest"]
    dataset, training = ctx.config.dataset, ctx.config.training
    frame = storage.read_parquet(snapshot_info["snapshot_uri"])
    splits = modeling.split_window(frame, dataset, training)
    x_train, y_train = modeling.features_and_label(splits.train, dataset)
    x_val, y_val = modeling.features_and_label(splits.validation, dataset)
    if training.shuffle_labels:
        y_train = np.random.default_rng(training.random_state).permutation(y_train)

    out_dir = ctx.artifact_dir("train")
    with tracking.pipeline_run(ctx, "train") as run:
        params: dict[str, Any] = {}
        trials: list[dict[str, Any]] = []
        if training.search.enabled:
            params, trials = _search(ctx, x_train, y_train, x_val, y_val)
        started = time.perf_counter()
        champion = _champion_to_continue(ctx)
        if champion is not None:
            version, base = champion
            log.info("stateful training: continuing champion v%s on the new window", version)
            model = modeling.continue_training(base, x_train, y_train, training.warm_start_iterations)
        else:
            model = modeling.build_pipeline(dataset, training, params).fit(x_train, y_train)
        mode: TrainingMode = {
            "mode": "stateful" if champion else "stateless",
            "from_version": champion[0] if champion else None,
        }
        fit_seconds = time.perf_counter() - started
        val_proba = model.predict_proba(x_val)[:, 1]
        threshold = modeling.best_f1_threshold(y_val, val_proba)
        val_metrics = modeling.classification_metrics(y_val, val_proba, threshold)
        profile = modeling.reference_profile(splits.train, dataset)
        reference = modeling.reference_sample(
            frame, dataset, model, ctx.config.monitoring.drift.reference_rows, training.random_state
        )

        monitoring_profile = monitoring.training_profile(
            model, splits.test, dataset, threshold, training.random_state
        )
        test_uri = storage.write_parquet(storage.join(out_dir, "test.parquet"), splits.test)
        monitoring_uri = storage.write_json(
            storage.join(out_dir, "monitoring_profile.json"), monitoring_profile
        )
        profile_uri = storage.write_json(storage.join(out_dir, "reference_profile.json"), profile)
        reference_uri = storage.write_parquet(storage.join(out_dir, "reference.parquet"), reference)

        chosen = {**modeling.ESTIMATOR_DEFAULTS[training.estimator], **training.params, **params}
        mlflow.log_params(
            {
                "estimator": training.estimator,
                "training_mode": mode["mode"],
                "window_months": ctx.config.ingest.window_months,
                "shuffle_labels": training.shuffle_labels,
                "search": training.search.enabled,
                "split": training.split.method,
                **{f"rows_{k}": v for k, v in splits.sizes().items()},
                **{f"model.{k}": v for k, v in chosen.items()},
            }
        )
        mlflow.log_metrics(
            {f"validation_{k}": v for k, v in val_metrics.items() if isinstance(v, float)}
            | {"fit_seconds": fit_seconds}
        )
        mlflow.set_tags(
            {
                "data_hash": snapshot_info["data_hash"],
                "data.snapshot_uri": snapshot_info["snapshot_uri"],
                "data.window_start": snapshot_info["window"]["start"],
                "data.window_end": snapshot_info["window"]["end"],
                "threshold": f"{threshold:.6f}",
                "training.mode": mode["mode"],
                **({"training.warm_start_from": mode["from_version"]} if champion else {}),
            }
        )
        mlflow.log_dict(profile, "reference_profile.json")
        mlflow.log_dict(monitoring_profile, "monitoring_profile.json")
        mlflow.log_metrics({f"importance.{k}": v for k, v in monitoring_profile["importances"].items()})
        if trials:
            mlflow.log_dict({"trials": trials, "best": params}, "search.json")
        model_uri = model_format.log_model(model, x_train.head(5))
        # what the loaders will get, as they get it; register records it where only the pipeline writes
        model_digest = model_format.uri_digest(ctx.settings, model_uri)
    log.info(
        "trained %s on %d rows in %.1fs; validation ROC AUC %.4f",
        training.estimator,
        len(x_train),
        fit_seconds,
        val_metrics["roc_auc"] or float("nan"),
    )
    result: TrainResult = {
        "mlflow_run_id": run.info.run_id,
        "model_uri": model_uri,
        "model_sha256": model_digest,
        "estimator": training.estimator,
        "best_params": params,
        "threshold": threshold,
        "validation": val_metrics,
        "rows": splits.sizes(),
        "test_uri": test_uri,
        "reference_profile_uri": profile_uri,
        "reference_uri": reference_uri,
        "monitoring_profile_uri": monitoring_uri,
        "training_mode": mode,
        "data_hash": snapshot_info["data_hash"],
    }
    storage.write_json(storage.join(out_dir, "result.json"), result)
    return result
