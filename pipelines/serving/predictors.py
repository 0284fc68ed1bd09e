"""The predictors that score a Batch: the scikit-learn pipeline itself, and a lean equivalent.

For the project's HistGradientBoosting pipeline a lean predictor applies the
same preprocessing with lookup tables and sums the trees directly; it costs
about 1 ms per call instead of 5-10 ms. It is used only after a parity check
(:func:`pipelines.serving.model.choose_predictor`); otherwise the pipeline itself answers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipelines.serving.schema import Batch, FeatureSchema


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
