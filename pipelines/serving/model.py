"""A registered model ready to answer: loaded, checked, and given its fastest faithful predictor.

The input schema and request parsing live in :mod:`pipelines.serving.schema`, the predictors in
:mod:`pipelines.serving.predictors`. Here a downloaded model folder is loaded, and the lean
predictor is chosen only after a parity check against the full scikit-learn pipeline on the
model's input example and its variants; otherwise the pipeline itself answers.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.serving.predictors import LeanHistGradientBoosting, PipelinePredictor
from pipelines.serving.schema import Batch, FeatureSchema, InvalidInput, parse_records

# Re-exported: callers import these from here (the schema and predictors used to live in this module).
__all__ = [
    "PARITY_TOLERANCE",
    "Batch",
    "FeatureSchema",
    "InvalidInput",
    "LoadedModel",
    "PipelinePredictor",
    "choose_predictor",
    "input_example",
    "load_model_dir",
    "parity_rows",
    "parse_records",
]

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-9


def parity_rows(example: pd.DataFrame, schema: FeatureSchema) -> Batch:
    """The input example plus variants with missing values and unseen categories."""
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in example[list(schema.columns)].to_dict("records")
    ]
    variants: list[dict[str, Any]] = []
    for row in rows:
        variants.extend({**row, name: None} for name in schema.columns)
        variants.append({**row, **{c: "__unseen__" for c in schema.categorical}})
    return parse_records(rows + variants, schema, max_rows=10**6)


def _rows(batch: Batch, lo: int, hi: int) -> Batch:
    return Batch(batch.numeric[lo:hi], [column[lo:hi] for column in batch.categorical])


def choose_predictor(pipeline, schema: FeatureSchema, check: Batch) -> tuple[Any, float | None]:
    """The lean predictor when it matches the pipeline on ``check`` rows, else the pipeline itself."""
    reference = PipelinePredictor(pipeline, schema)
    try:
        lean = LeanHistGradientBoosting(pipeline, schema)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        log.info("lean predictor not applicable (%s): serving with scikit-learn", exc)
        return reference, None
    expected = reference.predict_proba(check)
    # Both of the lean predictor's paths: the whole batch, and row by row (small batches).
    by_row = np.concatenate([lean.predict_proba(_rows(check, i, i + 1)) for i in range(len(check))])
    gap = float(max(np.max(np.abs(expected - lean.predict_proba(check))), np.max(np.abs(expected - by_row))))
    if not gap <= PARITY_TOLERANCE:
        log.warning("lean predictor differs from scikit-learn by %.3g: serving with scikit-learn", gap)
        return reference, gap
    return lean, gap


@dataclass
class LoadedModel:
    """One registered model version, loaded and checked, ready to score batches."""

    name: str
    version: str
    threshold: float
    schema: FeatureSchema
    predictor: Any
    parity_gap: float | None = None
    run_id: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0

    @property
    def runtime(self) -> str:
        return self.predictor.runtime

    def predict_proba(self, batch: Batch) -> np.ndarray:
        return self.predictor.predict_proba(batch)


def load_model_dir(path: str | Path, *, name: str, version: str, threshold: float | None) -> LoadedModel:
    """Load a downloaded MLflow sklearn model folder and pick its predictor."""
    from mlflow.models import Model

    from pipelines import model_format

    started = time.perf_counter()
    path = Path(path)
    meta = Model.load(path / "MLmodel")
    schema = FeatureSchema.from_signature(meta.signature)
    pipeline = model_format.load_pipeline(path)  # skops only, types trusted by the project's code
    example = input_example(meta, path, schema)
    predictor, gap = choose_predictor(pipeline, schema, parity_rows(example, schema))
    model = LoadedModel(
        name=name,
        version=str(version),
        threshold=0.5 if threshold is None else float(threshold),
        schema=schema,
        predictor=predictor,
        parity_gap=gap,
        run_id=meta.run_id,
        load_seconds=time.perf_counter() - started,
    )
    log.info(
        "loaded %s v%s (%s, parity gap %s) in %.2fs",
        name,
        version,
        model.runtime,
        "n/a" if gap is None else f"{gap:.1e}",
        model.load_seconds,
    )
    return model


def input_example(meta, path: Path, schema: FeatureSchema) -> pd.DataFrame:
    """The rows the model was saved with (the parity check and infra validation compare answers on
    them); a model saved without any gets one all-missing row, which still checks the plumbing.

    An example the model says it has but that cannot be read is an error, not a quiet fallback:
    that fallback once hid a misspelt call, and every check compared one all-missing row.
    """
    if not meta.saved_input_example_info:
        log.warning("the model has no input example: checking one all-missing row")
        return pd.DataFrame([{c: None for c in schema.columns}])
    example = meta.load_input_example(str(path))
    if not isinstance(example, pd.DataFrame) or example.empty:
        raise ValueError(f"the model's input example is not a table of rows: {type(example).__name__}")
    missing = sorted(set(schema.columns) - set(example.columns))
    if missing:
        raise ValueError(f"the model's input example lacks the signature's columns {missing}")
    return example
