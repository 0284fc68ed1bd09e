"""Reports people would rather look at than read: self-contained HTML with embedded plots."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np


def _figure_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def comparison_figure(curves: dict[str, dict[str, np.ndarray]], slices: dict[str, Any]):
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


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def evaluation_html(evaluation: dict[str, Any], figure_png: str) -> str:
    """The candidate-vs-champion comparison page."""
    decision = evaluation["decision"]
    verdict = "PASSED" if decision["passed"] else "REJECTED"
    colour = "#1a7f37" if decision["passed"] else "#cf222e"
    metric_names = [
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "f1",
        "precision",
        "recall",
        "threshold",
        "expected_calibration_error",
        "rows",
        "positive_rate",
    ]
    models = {"candidate": evaluation["candidate"]["metrics"]}
    if evaluation.get("champion"):
        models[f"champion v{evaluation['champion']['version']}"] = evaluation["champion"]["metrics"]
    metric_rows = [{"metric": m, **{k: v.get(m) for k, v in models.items()}} for m in metric_names]
    check_rows = [
        {k: c.get(k) for k in ("check", "metric", "candidate", "champion", "threshold", "passed", "reason")}
        for c in decision["checks"]
    ]
    slice_html = ""
    for column, table in evaluation["slices"].items():
        rows = [
            {
                column: name,
                "rows": s["rows"],
                "positive_rate": s["positive_rate"],
                **{f"roc_auc {m}": v for m, v in s["roc_auc"].items()},
            }
            for name, s in table.items()
        ]
        cols = [
            column,
            "rows",
            "positive_rate",
            *sorted({k for r in rows for k in r if k.startswith("roc_auc")}),
        ]
        slice_html += f"<h3>By {html.escape(column)}</h3>" + _table(rows, cols)
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Evaluation {html.escape(evaluation["run_key"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #d0d7de;padding:.3em .6em;text-align:right}}
th{{background:#f6f8fa}}td:first-child{{text-align:left}}.verdict{{color:{colour};font-weight:bold}}</style>
</head><body>
<h1>Evaluation: <span class="verdict">{verdict}</span></h1>
<p>{html.escape(decision["reason"])}</p>
<p>Run <code>{html.escape(evaluation["run_key"])}</code>,
data hash <code>{html.escape(evaluation["data_hash"][:16])}</code>,
test split {evaluation["candidate"]["metrics"]["rows"]} rows from the newest part of the window.</p>
<h2>Gate</h2>{_table(check_rows, list(check_rows[0]))}
<h2>Metrics on the same test set</h2>{_table(metric_rows, ["metric", *models])}
<img alt="curves" style="max-width:100%" src="data:image/png;base64,{figure_png}">
<h2>Slices</h2>{slice_html}
</body></html>"""


def render_evaluation(
    evaluation: dict[str, Any], curves: dict[str, dict[str, np.ndarray]]
) -> tuple[str, bytes]:
    """HTML page and the PNG of its figure."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(curves, evaluation["slices"])
    png = _figure_png(fig)
    plt.close(fig)
    return evaluation_html(evaluation, png), base64.b64decode(png)


def rollout_html(model: str, version: str, started: dict[str, Any], verdict: dict[str, Any]) -> str:
    """The rollout's verdict: error rate of each arm with a 95% interval, and the test's numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policy = started.get("policy") or {}
    n = int(verdict.get("sample_size") or 0)
    arms = [
        ("champion v" + str((policy.get("test") or {}).get("champion_version", "?")), "error_rate_champion"),
        (f"challenger v{version}", "error_rate_challenger"),
    ]
    figure = ""
    if n and all(verdict.get(key) is not None for _, key in arms):
        rates = [float(verdict[key]) for _, key in arms]
        half = [1.96 * (r * (1 - r) / n) ** 0.5 for r in rates]
        fig, ax = plt.subplots(figsize=(5.5, 2.6))
        ax.barh([name for name, _ in arms], rates, xerr=half, color=["#8c959f", "#0969da"], capsize=6)
        ax.set_xlabel(f"error rate on the first {n} labelled rows per arm (95% interval)")
        ax.set_xlim(0, min(1, max(r + h for r, h in zip(rates, half, strict=True)) * 1.25))
        figure = f'<img alt="error rates" src="data:image/png;base64,{_figure_png(fig)}">'
        plt.close(fig)
    decision = str(verdict.get("decision"))
    colour = {"promote": "#1a7f37", "abort": "#cf222e"}.get(decision, "#9a6700")
    numbers = [
        {"quantity": k, "value": v} for k, v in verdict.items() if k not in {"status", "decision", "reason"}
    ]
    plan = [{"quantity": k, "value": v} for k, v in (policy.get("test") or {}).items()]
    title = f"Rollout of {html.escape(model)} v{html.escape(version)}"
    rollout_id, started_at = (
        html.escape(str(policy.get("rollout_id"))),
        html.escape(str(policy.get("started_at"))),
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #d0d7de;padding:.3em .6em}}
th{{background:#f6f8fa}}.verdict{{color:{colour};font-weight:bold}}</style></head><body>
<h1>{title}: <span class="verdict">{html.escape(decision)}</span></h1>
<p>{html.escape(str(verdict.get("reason", "")))}</p>
<p>Strategy <b>{html.escape(str(started.get("strategy")))}</b>, rollout <code>{rollout_id}</code>,
started {started_at}.</p>
{figure}
<h2>The test, fixed before traffic moved</h2>{_table(plan, ["quantity", "value"])}
<h2>Result</h2>{_table(numbers, ["quantity", "value"])}
</body></html>"""


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
    import pandas as pd

    return pd.to_numeric(pd.Series(values), errors="coerce")


def _shares(values: Any) -> Any:
    import pandas as pd

    series = pd.Series(values).dropna()
    if series.empty:
        return pd.Series(dtype=float)
    return series.astype(str).value_counts(normalize=True)


def drift_html(report: dict[str, Any], reference, current, dataset) -> str:
    """The monitoring report: verdicts up top, a table of every column's test, the distributions."""
    import matplotlib.pyplot as plt

    fig = drift_figure(report, reference, current, dataset)
    png = _figure_png(fig)
    plt.close(fig)
    d, p = report["drift"], report["performance"]
    name, version = html.escape(str(report["model_name"])), html.escape(str(report["champion_version"]))
    window = report["window"]
    share = "n/a" if d["share"] is None else f"{d['share']:.0%}"
    colours = {"drift": "#cf222e", "decay": "#cf222e", "ok": "#1a7f37"}
    rows = []
    for r in [*report["features"], *(x for x in (report["prediction"], report["label"]) if x)]:
        rows.append(
            {
                "column": r["column"],
                "kind": r["kind"],
                "method": r["method"],
                "threshold": r["threshold"],
                "score": r["score"],
                "status": r["status"],
                "rows (current)": r["n_current"],
                "missing ref -> cur": f"{r['missing_reference']:.1%} -> {r['missing_current']:.1%}",
            }
        )
    live = "n/a" if p["live"] is None else f"{p['live']:.4f}"
    training = "n/a" if p["training"] is None else f"{p['training']:.4f}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Drift: {name} v{version}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #d0d7de;padding:.3em .6em}}
th{{background:#f6f8fa}}img{{max-width:100%}}</style></head><body>
<h1>Monitoring {name} v{version}</h1>
<p>Window [{html.escape(window["start"])}, {html.escape(window["end"])}) on the {html.escape(window["clock"])}
clock, from the {html.escape(window["source"])}: {report["rows"]["window"]} rows,
{report["rows"]["champion"]} answered by the champion, {report["rows"]["labelled"]} labelled so far.</p>
<p>Covariate drift: <b style="color:{colours.get(d["status"], "#9a6700")}">{html.escape(d["status"])}</b>,
{d["drifted"]} of {d["judged"]} judged features ({share}; the window drifts at {d["threshold_share"]:.0%}).
Drifted: {html.escape(", ".join(d["drifted_features"]) or "none")}.</p>
<p>Performance: <b style="color:{colours.get(p["status"], "#9a6700")}">{html.escape(p["status"])}</b>,
live {html.escape(p["metric"])} {live} on {p["labelled_rows"]} labelled rows vs {training} at training
(allowed drop {p["max_drop"]}).</p>
<img alt="reference vs current distributions" src="data:image/png;base64,{png}">
<h2>Every column's test</h2>
{_table(rows, list(rows[0]) if rows else [])}
<p>p-value methods (ks, chi2) drift below the threshold; distances (wasserstein, psi, jensenshannon,
linf) at or above it. Fewer than the minimum rows: insufficient data, never an alarm.</p>
</body></html>"""


def loop_html(model: str, table: list[dict[str, Any]]) -> str:
    """The closed loop month by month: live ROC AUC with retraining vs never retraining, and drift."""
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
    png = _figure_png(fig)
    plt.close(fig)
    columns = ["month", "flights", "drift_share", "drifted", "live_auc", "never_retrain_auc", "verdict",
               "retrain", "new_version", "gate", "rollout", "serving", "unanswered"]  # fmt: skip
    name = html.escape(model)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Closed loop: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #d0d7de;padding:.3em .6em}}
th{{background:#f6f8fa}}img{{max-width:100%}}</style></head><body>
<h1>Closed loop: {name}</h1>
<img alt="live ROC AUC and drift by month" src="data:image/png;base64,{png}">
{_table(table, columns)}
</body></html>"""


def backtest_html(result: dict[str, Any]) -> str:
    """The policy backtest: live ROC AUC by month per policy with the oracle, and each trigger's trade-off."""
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
    png = _figure_png(fig)
    plt.close(fig)
    policy_columns = ["policy", "description", "mean_live_auc", "mean_log_loss", "retrains", "fit_seconds",
                      "months_below_best", "alarms", "alarm_precision", "alarm_recall"]  # fmt: skip
    strategy_columns = ["strategy", "policy", "mean_live_auc", "retrains", "fit_seconds", "months_below_best"]
    trade = [
        {"trigger": name, **(curve["best"] or {})} for name, curve in result["tradeoff"]["curves"].items()
    ]
    estimate = result["estimation"]
    months_table = [{"policy": name, **r} for name, rows in result["months"].items() for r in rows]
    name = html.escape(result["dataset"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Policy backtest: {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#1f2328}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #d0d7de;padding:.3em .6em}}
th{{background:#f6f8fa}}img{{max-width:100%}}</style></head><body>
<h1>Policy backtest: {name}</h1>
<p>Months {html.escape(months[0])} to {html.escape(months[-1])}, retraining {html.escape(result["strategy"])}.
Harm: the serving model's live ROC AUC next month more than {
        result["harm_margin"]
    } below a fresh retrain's.</p>
<img alt="live ROC AUC by policy and trigger trade-offs" src="data:image/png;base64,{png}">
<h2>Policies</h2>{_table(result["policies"], policy_columns)}
<h2>Training strategies</h2>{_table(result["strategies"], strategy_columns)}
<h2>Triggers against realised harm ({result["tradeoff"]["situations"]} situations,
{result["tradeoff"]["harmful"]} harmful)</h2>
{_table(trade, ["trigger", "threshold", "alarms", "precision", "recall", "meets_target"])}
<h2>Estimated before labels (CBPE) vs realised, configured policy</h2>
<p>Mean absolute error: {estimate["mean_absolute_error"]}</p>
{_table(estimate["months"], ["month", "estimated_auc", "live_auc"])}
<h2>Month by month</h2>
{
        _table(
            months_table,
            [
                "policy",
                "month",
                "serving",
                "live_auc",
                "oracle_auc",
                "estimated_auc",
                "weighted_drift",
                "alarm",
                "reason",
                "retrain",
                "rollout",
            ],
        )
    }
</body></html>"""
