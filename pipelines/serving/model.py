"""A registered model ready to answer: its input schema, its threshold and a fast predictor.

Requests arrive as JSON records. They are checked against the model's MLflow
signature by hand (a few dict lookups per row, every problem named), turned
into plain arrays, and scored without building a DataFrame per request.

For the project's HistGradientBoosting pipeline a lean predictor applies the
same preprocessing with lookup tables and sums the trees directly; it costs
about 1 ms per call instead of 5-10 ms. It is used only after a parity check
against the full scikit-learn pipeline; otherwise the pipeline itself answers.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

NUMERIC_TYPES = {"double", "float", "long", "integer"}
PARITY_TOLERANCE = 1e-9


class InvalidInput(ValueError):
    """A request that does not match the model's signature; ``errors`` names each problem."""

    def __init__(self, errors: list[dict[str, Any]]):
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors[:5]))
        self.errors = errors


@dataclass(frozen=True)
class FeatureSchema:
    """The model's input columns, split by kind, in signature order."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    optional: frozenset[str] = frozenset()

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @classmethod
    def from_signature(cls, signature) -> FeatureSchema:
        """Read the input schema of an MLflow signature (column names and types)."""
        if signature is None or signature.inputs is None:
            raise ValueError("the model has no signature: cannot validate requests")
        numeric, categorical, optional = [], [], set()
        for spec in signature.inputs.to_dict():
            kind = str(spec.get("type"))
            name = spec["name"]
            if kind in NUMERIC_TYPES:
                numeric.append(name)
            elif kind == "string":
                categorical.append(name)
            else:
                raise ValueError(f"input column {name!r} has type {kind!r}, which the server cannot take")
            if not spec.get("required", True):
                optional.add(name)
        return cls(tuple(numeric), tuple(categorical), frozenset(optional))


@dataclass
class Batch:
    """Validated rows as arrays: numeric (n, k) float64 and one object column per categorical."""

    numeric: np.ndarray
    categorical: list[list[str | None]]

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def frame(self, schema: FeatureSchema) -> pd.DataFrame:
        data: dict[str, Any] = {c: self.numeric[:, i] for i, c in enumerate(schema.numeric)}
        data |= {c: pd.Series(self.categorical[i], dtype=object) for i, c in enumerate(schema.categorical)}
        return pd.DataFrame(data, columns=list(schema.columns))

    def records(self, schema: FeatureSchema) -> list[dict[str, Any]]:
        """Rows back as dicts (for the prediction log); NaN becomes None."""
        num = self.numeric.tolist()
        out = []
        for r in range(len(self)):
            row = {c: (None if math.isnan(v) else v) for c, v in zip(schema.numeric, num[r], strict=True)}
            row |= {c: self.categorical[i][r] for i, c in enumerate(schema.categorical)}
            out.append(row)
        return out

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        if len(batches) == 1:
            return batches[0]
        cats = [
            list(chain.from_iterable(b.categorical[i] for b in batches))
            for i in range(len(batches[0].categorical))
        ]
        return Batch(np.vstack([b.numeric for b in batches]), cats)


# A category is a short label: bounded, and free of control characters (PostgreSQL's log refuses NUL).
MAX_TEXT = 1024
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _shown(value: Any) -> str:
    """A value for an error message: short, and never ``repr`` of a container (deep nesting
    makes ``repr`` raise RecursionError, a 500 from a 2 KB body)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value[:40] if isinstance(value, str) else value)[:42]


def parse_records(records: Any, schema: FeatureSchema, *, max_rows: int) -> Batch:
    """Check JSON records against the schema and build arrays; raise InvalidInput naming every problem."""
    if not isinstance(records, list):
        raise InvalidInput([{"loc": ["records"], "msg": "must be a list of objects (one per row)"}])
    if not records:
        raise InvalidInput([{"loc": ["records"], "msg": "is empty: send at least one row"}])
    if len(records) > max_rows:
        raise InvalidInput([{"loc": ["records"], "msg": f"has {len(records)} rows; the limit is {max_rows}"}])
    allowed = set(schema.columns)
    required = allowed - schema.optional
    n = len(records)
    numeric = np.full((n, len(schema.numeric)), np.nan)
    categorical: list[list[str | None]] = [[None] * n for _ in schema.categorical]
    errors: list[dict[str, Any]] = []
    for r, record in enumerate(records):
        if not isinstance(record, dict):
            errors.append({"loc": ["records", r], "msg": "must be an object of feature values"})
            continue
        keys = record.keys()
        if keys != allowed:
            for name in sorted(required - keys):
                errors.append({"loc": ["records", r, name], "msg": "field required"})
            for name in sorted(keys - allowed):
                errors.append({"loc": ["records", r, name], "msg": "unknown field (not a model input)"})
        for i, name in enumerate(schema.numeric):
            value = record.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                errors.append({"loc": ["records", r, name], "msg": f"must be a number, got {_shown(value)}"})
            elif not math.isfinite(value):
                errors.append({"loc": ["records", r, name], "msg": "must be finite (use null for missing)"})
            else:
                numeric[r, i] = value
        for i, name in enumerate(schema.categorical):
            value = record.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                errors.append({"loc": ["records", r, name], "msg": f"must be a string, got {_shown(value)}"})
            elif len(value) > MAX_TEXT or CONTROL.search(value):
                errors.append(
                    {
                        "loc": ["records", r, name],
                        "msg": f"must be at most {MAX_TEXT} characters with no control character",
                    }
                )
            else:
                categorical[i][r] = value
        if len(errors) >= 50:
            errors.append({"loc": ["records"], "msg": "too many errors; stopped after 50"})
            break
    if errors:
        raise InvalidInput(errors)
    return Batch(numeric, categorical)


class PipelinePredictor:
    """The scikit-learn pipeline itself, fed a DataFrame built once per micro-batch."""

    runtime = "sklearn"

    def __init__(self, pipeline, schema: FeatureSchema):
        self.pipeline, self.schema = pipeline, schema

    def predict_proba(self, batch: Batch) -> np.ndarray:
        return self.pipeline.predict_proba(batch.frame(self.schema))[:, 1]


class LeanHistGradientBoosting:
    """Same answers as ``Pipeline(ColumnTransformer(passthrough, OrdinalEncoder), HGB)``, without pandas.

    Categorical strings map straight to the codes the trees were fitted on (the
    outer OrdinalEncoder and HGB's own category remapping composed into one
    lookup); the trees are summed as HGB's own ``_raw_predict`` does. It reads
    private attributes of scikit-learn, which is why it must pass a parity check.
    """

    runtime = "lean-hgb"

    def __init__(self, pipeline, schema: FeatureSchema):
        pre, est = pipeline.named_steps["preprocess"], pipeline.named_steps["model"]
        if type(est).__name__ != "HistGradientBoostingClassifier" or len(est.classes_) != 2:
            raise TypeError("not a binary HistGradientBoostingClassifier")
        by_name = {name: (transformer, list(cols)) for name, transformer, cols in pre.transformers_}
        if set(by_name) - {"num", "cat", "remainder"}:
            raise TypeError(f"unexpected preprocessing steps {sorted(by_name)}")
        num_cols = by_name["num"][1]
        cat_encoder, cat_cols = by_name.get("cat", (None, []))
        # "passthrough" is fitted as an identity FunctionTransformer (func None); a transformer with a
        # function of its own computes something this class does not, whatever the parity rows say.
        numeric = by_name["num"][0]
        if numeric != "passthrough" and not (
            type(numeric).__name__ == "FunctionTransformer" and numeric.func is None
        ):
            raise TypeError("numeric columns are transformed; only passthrough is supported")
        if cat_cols and type(cat_encoder).__name__ != "OrdinalEncoder":
            raise TypeError("categorical columns are not ordinal-encoded")
        if list(schema.numeric) != num_cols or list(schema.categorical) != cat_cols:
            raise TypeError("signature columns differ from the pipeline's columns")
        # Where HGB's own preprocessor puts each column: its categorical block first, then the rest.
        is_cat = np.asarray(est.is_categorical_, dtype=bool)
        cat_positions, num_positions = np.flatnonzero(is_cat), np.flatnonzero(~is_cat)
        n_num = len(num_cols)
        if list(cat_positions) != list(range(n_num, n_num + len(cat_cols))):
            raise TypeError("the estimator's categorical columns are not the encoded ones")
        self._num_source = num_positions
        self._n_features = len(is_cat)
        self._cat_lookup = self._code_tables(cat_encoder, cat_cols, est) if cat_cols else []
        self._bitsets, self._f_idx_map = est._bin_mapper.make_known_categories_bitsets()
        self._predictors = [iteration[0] for iteration in est._predictors]
        self._baseline = float(np.asarray(est._baseline_prediction).ravel()[0])
        self._forest = _Forest(self._predictors)

    @staticmethod
    def _code_tables(encoder, columns: list[str], est) -> list[tuple[int, dict[str, float]]]:
        """Category string -> the code the trees see, through both encoders' public ``transform``."""
        categories = encoder.categories_
        longest = max(len(c) for c in categories)
        probe = pd.DataFrame(
            {
                col: [c[i] if i < len(c) else c[0] for i in range(longest)]
                for col, c in zip(columns, categories, strict=True)
            }
        )
        outer_codes = encoder.transform(probe)
        inner_codes = est._preprocessor.named_transformers_["encoder"].transform(outer_codes)
        tables = []
        for j, values in enumerate(categories):
            table = {}
            for i, value in enumerate(values):
                if isinstance(value, str) and not math.isnan(inner_codes[i, j]):
                    table[value] = float(inner_codes[i, j])
            tables.append((j, table))
        return tables

    def predict_proba(self, batch: Batch) -> np.ndarray:
        n = len(batch)
        x = np.empty((n, self._n_features), dtype=np.float64)
        n_cat = len(self._cat_lookup)
        for k, (j, table) in enumerate(self._cat_lookup):
            x[:, k] = [table.get(v, np.nan) if v is not None else np.nan for v in batch.categorical[j]]
        x[:, n_cat:] = batch.numeric[:, self._num_source]
        if n <= VECTOR_ROWS:  # small batches: all trees at once in numpy, no per-tree call overhead
            raw = self._baseline + self._forest.predict(x)
        else:  # large batches: scikit-learn's own per-tree traversal is faster
            raw = np.full(n, self._baseline)
            for predictor in self._predictors:
                raw += predictor.predict(
                    x, known_cat_bitsets=self._bitsets, f_idx_map=self._f_idx_map, n_threads=1
                )
        return 1.0 / (1.0 + np.exp(-raw))


VECTOR_ROWS = 8  # measured crossover: numpy over all trees wins below ~8 rows, per-tree Cython above


class _Forest:
    """Every tree of a fitted HGB in flat arrays, traversed level by level for all trees at once.

    Same decisions as scikit-learn's traversal for the inputs the lean predictor
    builds (numbers, or known category codes, or NaN): NaN follows the node's
    missing direction, a category goes left when its bit is set in the split's
    bitset, a number goes left when it is <= the threshold.
    """

    def __init__(self, predictors: list) -> None:
        offsets = np.cumsum([0] + [len(p.nodes) for p in predictors[:-1]])
        bit_offsets = np.cumsum([0] + [len(p.raw_left_cat_bitsets) for p in predictors[:-1]])
        nodes = np.concatenate([p.nodes for p in predictors])
        sizes = [len(p.nodes) for p in predictors]
        shift = np.repeat(offsets, sizes)
        bit_shift = np.repeat(bit_offsets, sizes)
        self.roots = offsets.astype(np.intp)
        self.feature = nodes["feature_idx"].astype(np.intp)
        self.threshold = nodes["num_threshold"].astype(np.float64)
        self.missing_left = nodes["missing_go_to_left"].astype(bool)
        self.leaf = nodes["is_leaf"].astype(bool)
        self.left = np.where(self.leaf, np.arange(len(nodes)), nodes["left"] + shift).astype(np.intp)
        self.right = np.where(self.leaf, np.arange(len(nodes)), nodes["right"] + shift).astype(np.intp)
        self.value = nodes["value"].astype(np.float64)
        self.categorical = nodes["is_categorical"].astype(bool)
        self.bitset_row = (nodes["bitset_idx"] + bit_shift).astype(np.intp)
        bitsets = [p.raw_left_cat_bitsets for p in predictors if len(p.raw_left_cat_bitsets)]
        self.bitsets = np.concatenate(bitsets) if bitsets else np.zeros((1, 8), dtype=np.uint32)
        self.depth = int(nodes["depth"].max()) + 1
        self.any_categorical = bool(self.categorical.any())

    def predict(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        rows = np.tile(np.arange(n), len(self.roots))
        node = np.repeat(self.roots, n)
        for _ in range(self.depth):
            leaf = self.leaf[node]
            if leaf.all():
                break
            value = x[rows, self.feature[node]]
            missing = np.isnan(value)
            left = np.where(missing, self.missing_left[node], value <= self.threshold[node])
            if self.any_categorical:
                cat = self.categorical[node] & ~missing
                if cat.any():
                    code = value[cat].astype(np.intp)
                    words = self.bitsets[self.bitset_row[node[cat]], code >> 5]
                    left[cat] = (words >> (code & 31).astype(np.uint32)) & 1 == 1
            node = np.where(left, self.left[node], self.right[node])
        return self.value[node].reshape(len(self.roots), n).sum(axis=0)


def parity_rows(example: pd.DataFrame, schema: FeatureSchema) -> Batch:
    """The input example plus variants with missing values and unseen categories."""
    rows = [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for row in example[list(schema.columns)].to_dict("records")
    ]
    variants = []
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
