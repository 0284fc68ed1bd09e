"""The plots of the HTML reports (:mod:`pipelines.reports`), drawn with matplotlib.

Each ``*_png`` function draws one report's figure, closes it and returns the PNG as base64 text,
ready for a ``data:image/png;base64,`` URL. matplotlib (and scikit-learn for the curves) is
imported only when a figure is drawn.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np


def png_base64(fig: Any) -> str:
    """``fig`` as a PNG, base64-encoded."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def comparison_figure(curves: dict[str, dict[str, np.ndarray]], slices: dict[str, Any]) -> Any:
    """ROC, precision-recall and calibration curves per model, plus ROC AUC by slice."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_curve, roc_curve

    n_slices = len(slices)
    rows = 2 if n_slices else 1
    fig = plt.figure(figsize=(15, 4.5 * rows), layout="constrained")
    axes = [fig.add_subplot(rows, 3, i + 1) for i in range(3)]
    axes += [fig.add_subplot(rows, n_slices, n_slices + j + 1) for j in range(n_slices)]
    for label, data in curves.items():
        y, p = data["y"], data["proba"]
        fpr, tpr, _ = roc_curve(y, p)
        axes[0].plot(fpr, tpr, label=label)
        prec, rec, _ = precision_recall_curve(y, p)
        axes[1].plot(rec, prec, label=label)
        obs, pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
        axes[2].plot(pred, obs, marker="o", label=label)
    axes[0].plot([0, 1], [0, 1], ls=":", c="grey")
    axes[2].plot([0, 1], [0, 1], ls=":", c="grey")
    for ax, title, xl, yl in [
        (axes[0], "ROC", "false positive rate", "true positive rate"),
        (axes[1], "Precision-recall", "recall", "precision"),
        (axes[2], "Calibration", "mean predicted", "observed rate"),
    ]:
        ax.set(title=title, xlabel=xl, ylabel=yl)
        ax.legend(loc="best", fontsize=8)
    for ax, (column, table) in zip(axes[3:], slices.items(), strict=True):
        names = list(table)
        models = sorted({m for row in table.values() for m in row["roc_auc"]})
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            values = [table[n]["roc_auc"].get(model) or np.nan for n in names]
            ax.bar(np.arange(len(names)) + i * width, values, width, label=model)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60, fontsize=7)
        ax.set(title=f"ROC AUC by {column}", ylim=(0.4, 1.0))
        ax.legend(fontsize=8)
    return fig


def comparison_png(curves: dict[str, dict[str, np.ndarray]], slices: dict[str, Any]) -> str:
    """The evaluation page's figure (:func:`comparison_figure`) as base64 PNG."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(curves, slices)
    png = png_base64(fig)
    plt.close(fig)
    return png


def error_rates_png(arms: list[tuple[str, str]], verdict: Mapping[str, Any], n: int) -> str:
    """The rollout's error rate per arm with a 95% interval, as base64 PNG.

    ``arms`` are (label, verdict key of the arm's error rate); ``n`` the labelled rows per arm.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [float(verdict[key]) for _, key in arms]
    half = [1.96 * (r * (1 - r) / n) ** 0.5 for r in rates]
    fig, ax = plt.subplots(figsize=(5.5, 2.6))
    ax.barh([name for name, _ in arms], rates, xerr=half, color=["#8c959f", "#0969da"], capsize=6)
    ax.set_xlabel(f"error rate on the first {n} labelled rows per arm (95% interval)")
    ax.set_xlim(0, min(1, max(r + h for r, h in zip(rates, half, strict=True)) * 1.25))
    png = png_base64(fig)
    plt.close(fig)
    return png


def drift_figure(report: dict[str, Any], reference, current, dataset) -> Any:
    """Reference vs current distribution of every monitored column, drifted ones outlined in red."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    results = [*report["features"], *(r for r in (report["prediction"], report["label"]) if r)]
    cols = 4
    rows = -(-len(results) // cols)
    size = (4.2 * cols, 2.8 * rows)
    fig, axes = plt.subplots(rows, cols, figsize=size, layout="constrained", squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    for ax, result in zip(axes.flat, results, strict=False):
        column = result["column"]
        ref = reference.get(column, [])
        cur = current.get(column, [])
        if result["kind"] == "numeric":
            ref = np.asarray(pd_numeric(ref), dtype=float)
            cur = np.asarray(pd_numeric(cur), dtype=float)
            ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
            both = np.concatenate([ref, cur])
            if len(both):
                lo, hi = np.quantile(both, [0.005, 0.995])
                bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
                for values, label, colour in ((ref, "reference", "#8c959f"), (cur, "current", "#0969da")):
                    if len(values):  # an empty window has no density to draw
                        ax.hist(values, bins=bins, density=True, alpha=0.55, label=label, color=colour)
        else:
            shares_ref = _shares(ref)
            shares_cur = _shares(cur)
            top = (shares_ref.add(shares_cur, fill_value=0)).sort_values(ascending=False).index[:12]
            x = np.arange(len(top))
            ax.bar(x - 0.2, shares_ref.reindex(top).fillna(0), 0.4, label="reference", color="#8c959f")
            ax.bar(x + 0.2, shares_cur.reindex(top).fillna(0), 0.4, label="current", color="#0969da")
            ax.set_xticks(x, [str(t) for t in top], rotation=60, fontsize=7)
        score = f"{result['method']} {result['score']:.3g}" if result["score"] is not None else "too few rows"
        colour = "#cf222e" if result["drifted"] else "#1f2328"
        ax.set_title(f"{column}: {score}", fontsize=9, color=colour)
        if result["drifted"]:
            for spine in ax.spines.values():
                spine.set(color="#cf222e", linewidth=2)
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7)
    return fig


def pd_numeric(values: Any) -> Any:
    """``values`` as a numeric Series (NaN where a value is not a number)."""
    import pandas as pd

    return pd.to_numeric(pd.Series(values), errors="coerce")


def _shares(values: Any) -> Any:
    import pandas as pd

    series = pd.Series(values).dropna()
    if series.empty:
        return pd.Series(dtype=float)
    return series.astype(str).value_counts(normalize=True)


def drift_png(report: dict[str, Any], reference, current, dataset) -> str:
    """The monitoring page's figure (:func:`drift_figure`) as base64 PNG."""
    import matplotlib.pyplot as plt

    fig = drift_figure(report, reference, current, dataset)
    png = png_base64(fig)
    plt.close(fig)
    return png


def loop_png(model: str, table: list[dict[str, Any]]) -> str:
    """The closed loop by month: live ROC AUC with retraining vs never retraining, and drift (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    months = [r["month"] for r in table]
    x = np.arange(len(months))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, layout="constrained")
    live = [r.get("live_auc") or np.nan for r in table]
    never = [r.get("never_retrain_auc") or np.nan for r in table]
    top.plot(x, live, marker="o", label="the loop (champion serving at the time)", color="#0969da")
    top.plot(x, never, marker="s", ls="--", label="never retrain (the first champion)", color="#8c959f")
    for i, r in enumerate(table):
        if r.get("retrain") == "yes":
            top.axvline(i, color="#cf222e", alpha=0.25, lw=6)
    top.set(
        ylabel="live ROC AUC", title=f"{model}: retrain on drift vs never retrain (red: retrain requested)"
    )
    top.legend(fontsize=8)
    bottom.bar(x, [r.get("drift_share") or 0 for r in table], color="#9a6700")
    bottom.set(ylabel="share of drifted features", ylim=(0, 1))
    bottom.set_xticks(x, months)
    png = png_base64(fig)
    plt.close(fig)
    return png


def backtest_png(result: dict[str, Any]) -> str:
    """Live ROC AUC by month per policy with the oracle, and each trigger's trade-off (base64 PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    months = result["replay"]["months"]
    x = np.arange(len(months))
    fig, (top, bottom) = plt.subplots(1, 2, figsize=(14, 5), layout="constrained")
    top.plot(x, list(result["oracle"].values()), color="#1f2328", lw=3, alpha=0.3, label="oracle")
    for name, rows in result["months"].items():
        line = top.plot(x, [r["live_auc"] for r in rows], marker="o", ms=3, label=name)[0]
        retrained = [i for i, r in enumerate(rows) if r.get("retrain")]
        top.plot(retrained, [rows[i]["live_auc"] for i in retrained], "v", color=line.get_color(), ms=8)
    top.set_xticks(x, months, rotation=45)
    top.set(
        ylabel="live ROC AUC", title=f"{result['dataset']}: live ROC AUC by policy (▼: retrain at month end)"
    )
    top.legend(fontsize=7)
    for name, curve in result["tradeoff"]["curves"].items():
        pts = [p for p in curve["points"] if p["precision"] is not None and p["recall"] is not None]
        bottom.plot([p["recall"] for p in pts], [p["precision"] for p in pts], marker=".", label=name)
    bottom.axhline(0.8, color="#8c959f", ls=":")
    bottom.axvline(0.8, color="#8c959f", ls=":")
    bottom.set(xlabel="recall of realised harm", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02),
               title="each trigger over its threshold")  # fmt: skip
    bottom.legend(fontsize=7)
    png = png_base64(fig)
    plt.close(fig)
    return png
