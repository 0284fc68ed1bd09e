"""Drift statistics: a reference sample against a current window, column by column.

Numeric columns: the two-sample Kolmogorov-Smirnov test, the Wasserstein-1
distance divided by the reference's standard deviation, and the population
stability index (PSI) on the reference's deciles. Categorical columns: the
chi-squared test of homogeneity, the Jensen-Shannon distance and the
L-infinity distance between the category shares.

Every statistic of a column comes from one sort: the reference is sorted once
(``Reference``) and reused for every window, the current values are sorted,
and the empirical CDFs of both are read off with ``searchsorted``. That is what
makes this several times faster than running each test on raw arrays. scipy
supplies the distributions (``kstwo``, ``chi2``) and the Jensen-Shannon
distance, so the numbers are the textbook ones.

Which statistic decides a column, and at which threshold, is configuration
(``monitoring.drift`` in the pipeline YAML); the effective method and threshold
are written next to every result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

# method -> (kind of column, direction). "p_value": drift when the p-value is below the threshold;
# "distance": drift when the distance reaches the threshold.
METHODS: dict[str, tuple[str, str]] = {
    "ks": ("numeric", "p_value"),
    "wasserstein": ("numeric", "distance"),
    "psi": ("numeric", "distance"),
    "chi2": ("categorical", "p_value"),
    "jensenshannon": ("categorical", "distance"),
    "linf": ("categorical", "distance"),
}
DEFAULT_THRESHOLDS: dict[str, float] = {
    "ks": 0.01,
    "chi2": 0.01,
    "wasserstein": 0.1,
    "psi": 0.2,
    "jensenshannon": 0.1,
    "linf": 0.3,
}
# Share floor for empty bins/categories in PSI (log of zero otherwise); the usual choice.
PSI_EPSILON = 1e-4

INSUFFICIENT = "insufficient_data"


@dataclass(frozen=True)
class ColumnRule:
    """How one column is judged: its kind, the deciding method and its threshold."""

    kind: Literal["numeric", "categorical"]
    method: str
    threshold: float

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown drift method {self.method!r}; known: {sorted(METHODS)}")
        if METHODS[self.method][0] != self.kind:
            expected = METHODS[self.method][0]
            raise ValueError(f"method {self.method!r} is for {expected} columns, not {self.kind}")

    def drifted(self, score: float) -> bool:
        if METHODS[self.method][1] == "p_value":
            return bool(score < self.threshold)
        return bool(score >= self.threshold)


@dataclass
class ReferenceColumn:
    """A reference column prepared once: sorted finite values (numeric) or category shares."""

    kind: str
    n: int
    missing: float
    sorted_values: np.ndarray | None = None
    std: float = 0.0
    psi_edges: np.ndarray | None = None
    psi_shares: np.ndarray | None = None
    counts: pd.Series | None = None


@dataclass
class Reference:
    """The training reference, prepared for fast comparison with many windows."""

    columns: dict[str, ReferenceColumn] = field(default_factory=dict)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, kinds: Mapping[str, str], psi_bins: int = 10) -> Reference:
        ref = cls()
        for column, kind in kinds.items():
            if column in frame:
                ref.columns[column] = _prepare(frame[column], kind, psi_bins)
        return ref


def _numeric(values: pd.Series | np.ndarray) -> np.ndarray:
    array = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    return array[np.isfinite(array)]


def _categories(values: pd.Series) -> pd.Series:
    return pd.Series(values).dropna().astype(str).value_counts()


def _prepare(values: pd.Series, kind: str, psi_bins: int) -> ReferenceColumn:
    n_all = len(values)
    missing = float(pd.isna(values).mean()) if n_all else 0.0
    if kind == "numeric":
        ordered = np.sort(_numeric(values))
        col = ReferenceColumn(kind, len(ordered), missing, sorted_values=ordered)
        if len(ordered):
            col.std = float(np.std(ordered))
            quantiles = np.quantile(ordered, np.linspace(0, 1, psi_bins + 1)[1:-1])
            col.psi_edges = np.unique(quantiles)
            col.psi_shares = _bin_shares(ordered, col.psi_edges)
        return col
    counts = _categories(values)
    return ReferenceColumn(kind, int(counts.sum()), missing, counts=counts)


def _bin_shares(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of values in (-inf, e0], (e0, e1], ..., (ek, inf) for sorted values."""
    cuts = np.searchsorted(sorted_values, edges, side="right")
    counts = np.diff(np.concatenate([[0], cuts, [len(sorted_values)]]))
    return counts / max(len(sorted_values), 1)


def numeric_statistics(ref: ReferenceColumn, current: np.ndarray) -> dict[str, float]:
    """KS statistic and p-value, normalised Wasserstein distance and PSI from sorted arrays."""
    r, c = ref.sorted_values, np.sort(current)
    # set by _prepare for a numeric reference column with values (the caller checked ref.n)
    assert r is not None and ref.psi_edges is not None and ref.psi_shares is not None
    n, m = len(r), len(c)
    merged = np.sort(np.concatenate([r, c]), kind="mergesort")
    cdf_r = np.searchsorted(r, merged, side="right") / n
    cdf_c = np.searchsorted(c, merged, side="right") / m
    gap = np.abs(cdf_r - cdf_c)
    ks = float(gap.max())
    # Same p-value as scipy.stats.ks_2samp(method="asymp"): the one-sample distribution at n*m/(n+m).
    ks_p = float(np.clip(stats.kstwo.sf(ks, np.round(n * m / (n + m))), 0.0, 1.0))
    wasserstein = float(np.sum(gap[:-1] * np.diff(merged)))
    scale = ref.std if ref.std > 0 else 1.0  # a constant reference: the raw distance
    cur_shares = _bin_shares(c, ref.psi_edges)
    p = np.clip(ref.psi_shares, PSI_EPSILON, None)
    q = np.clip(cur_shares, PSI_EPSILON, None)
    psi = float(np.sum((q - p) * np.log(q / p)))
    return {"ks": ks_p, "ks_statistic": ks, "wasserstein": wasserstein / scale, "psi": psi}


def categorical_statistics(ref: ReferenceColumn, current: pd.Series) -> dict[str, float]:
    """Chi-squared p-value (2 x k homogeneity), Jensen-Shannon and L-infinity distances."""
    cur = _categories(current)
    table = pd.concat([ref.counts, cur], axis=1, keys=["reference", "current"]).fillna(0.0)
    p = table["reference"].to_numpy() / max(table["reference"].sum(), 1)
    q = table["current"].to_numpy() / max(table["current"].sum(), 1)
    if len(table) < 2:
        chi2_p = 1.0  # one category on both sides: nothing can have moved
    else:
        chi2_p = float(stats.chi2_contingency(table.to_numpy().T, correction=False).pvalue)
    return {
        "chi2": chi2_p,
        "jensenshannon": float(distance.jensenshannon(p, q)),
        "linf": float(np.max(np.abs(p - q))),
        "new_categories": int(((table["reference"] == 0) & (table["current"] > 0)).sum()),
    }


def compare_column(
    name: str, ref: ReferenceColumn, current: pd.Series, rule: ColumnRule, min_rows: int
) -> dict[str, Any]:
    """One column's verdict: every statistic of its kind, the deciding one, and whether it drifted."""
    missing = float(pd.isna(current).mean()) if len(current) else 0.0
    values = _numeric(current) if rule.kind == "numeric" else pd.Series(current).dropna()
    result: dict[str, Any] = {
        "column": name,
        "kind": rule.kind,
        "method": rule.method,
        "threshold": rule.threshold,
        "direction": METHODS[rule.method][1],
        "n_reference": ref.n,
        "n_current": len(values),
        "missing_reference": ref.missing,
        "missing_current": missing,
    }
    if len(values) < min_rows or ref.n < min_rows:
        reason = f"{len(values)} current and {ref.n} reference values; at least {min_rows} needed"
        return {**result, "status": INSUFFICIENT, "drifted": None, "score": None, "reason": reason}
    if rule.kind == "numeric":
        statistics = numeric_statistics(ref, values)
    else:
        statistics = categorical_statistics(ref, values)
    score = statistics[rule.method]
    drifted = rule.drifted(score)
    return {
        **result,
        "status": "drift" if drifted else "ok",
        "drifted": drifted,
        "score": score,
        "statistics": statistics,
    }


def compare(
    reference: Reference,
    current: pd.DataFrame,
    rules: Mapping[str, ColumnRule],
    *,
    min_rows: int,
    columns: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Compare every column that has a rule, is in the reference and in the current frame."""
    names = [c for c in (columns or rules) if c in rules and c in reference.columns and c in current]
    return [compare_column(c, reference.columns[c], current[c], rules[c], min_rows) for c in names]


def weighted_share(results: Iterable[dict[str, Any]], weights: Mapping[str, float]) -> float | None:
    """Share of the judged columns' total weight that drifted (None: nothing judged or no weight)."""
    judged = [r for r in results if r["status"] != INSUFFICIENT]
    total = sum(max(weights.get(r["column"], 0.0), 0.0) for r in judged)
    if not judged or total <= 0:
        return None
    return sum(max(weights.get(r["column"], 0.0), 0.0) for r in judged if r["drifted"]) / total


def drift_share(results: Iterable[dict[str, Any]]) -> tuple[float | None, int, int]:
    """(share of judged columns that drifted, drifted, judged); share is None when none was judged."""
    judged = [r for r in results if r["status"] != INSUFFICIENT]
    drifted = sum(1 for r in judged if r["drifted"])
    return (drifted / len(judged) if judged else None), drifted, len(judged)
