"""Reports people would rather look at than read: self-contained HTML with embedded plots.

The pages are Jinja2 templates (``pipelines/templates/report_*.html.j2``, autoescaped: every
name, reason or value from the data is HTML-escaped); this module picks and formats what they
show. The plots are drawn by :mod:`pipelines.report_figures`.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping
from typing import Any

import jinja2
import numpy as np

from pipelines.report_figures import (
    backtest_png,
    comparison_figure,
    comparison_png,
    drift_figure,
    drift_png,
    error_rates_png,
    loop_png,
    pd_numeric,
)

__all__ = [
    "backtest_html",
    "comparison_figure",
    "drift_figure",
    "drift_html",
    "evaluation_html",
    "loop_html",
    "pd_numeric",
    "render_evaluation",
    "rollout_html",
]


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipelines", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _render(template: str, **context: Any) -> str:
    return _environment().get_template(template).render(**context)


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
    slices = []
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
        slices.append({"column": column, "rows": rows, "columns": cols})
    return _render(
        "report_evaluation.html.j2",
        run_key=evaluation["run_key"],
        colour=colour,
        verdict=verdict,
        reason=decision["reason"],
        data_hash=evaluation["data_hash"][:16],
        test_rows=evaluation["candidate"]["metrics"]["rows"],
        check_rows=check_rows,
        check_columns=list(check_rows[0]),
        metric_rows=metric_rows,
        metric_columns=["metric", *models],
        figure_png=figure_png,
        slices=slices,
    )


def render_evaluation(
    evaluation: dict[str, Any], curves: dict[str, dict[str, np.ndarray]]
) -> tuple[str, bytes]:
    """HTML page and the PNG of its figure."""
    png = comparison_png(curves, evaluation["slices"])
    return evaluation_html(evaluation, png), base64.b64decode(png)


def rollout_html(model: str, version: str, started: Mapping[str, Any], verdict: Mapping[str, Any]) -> str:
    """The rollout's verdict: error rate of each arm with a 95% interval, and the test's numbers."""
    policy = started.get("policy") or {}
    n = int(verdict.get("sample_size") or 0)
    arms = [
        ("champion v" + str((policy.get("test") or {}).get("champion_version", "?")), "error_rate_champion"),
        (f"challenger v{version}", "error_rate_challenger"),
    ]
    png = ""
    if n and all(verdict.get(key) is not None for _, key in arms):
        png = error_rates_png(arms, verdict, n)
    decision = str(verdict.get("decision"))
    colour = {"promote": "#1a7f37", "abort": "#cf222e"}.get(decision, "#9a6700")
    numbers = [
        {"quantity": k, "value": v} for k, v in verdict.items() if k not in {"status", "decision", "reason"}
    ]
    plan = [{"quantity": k, "value": v} for k, v in (policy.get("test") or {}).items()]
    return _render(
        "report_rollout.html.j2",
        model=model,
        version=version,
        colour=colour,
        decision=decision,
        reason=str(verdict.get("reason", "")),
        strategy=str(started.get("strategy")),
        rollout_id=str(policy.get("rollout_id")),
        started_at=str(policy.get("started_at")),
        figure_png=png,
        plan=plan,
        numbers=numbers,
    )


def drift_html(report: dict[str, Any], reference, current, dataset) -> str:
    """The monitoring report: verdicts up top, a table of every column's test, the distributions."""
    png = drift_png(report, reference, current, dataset)
    d, p = report["drift"], report["performance"]
    name, version = str(report["model_name"]), str(report["champion_version"])
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
    return _render(
        "report_drift.html.j2",
        name=name,
        version=version,
        window=report["window"],
        rows=report["rows"],
        drift=d,
        drift_colour=colours.get(d["status"], "#9a6700"),
        share=share,
        threshold_share=f"{d['threshold_share']:.0%}",
        drifted_features=", ".join(d["drifted_features"]) or "none",
        performance=p,
        performance_colour=colours.get(p["status"], "#9a6700"),
        live=live,
        training=training,
        figure_png=png,
        tests=rows,
        test_columns=list(rows[0]) if rows else [],
    )


def loop_html(model: str, table: list[dict[str, Any]]) -> str:
    """The closed loop month by month: live ROC AUC with retraining vs never retraining, and drift."""
    png = loop_png(model, table)
    columns = ["month", "rows", "drift_share", "drifted", "live_auc", "never_retrain_auc", "verdict",
               "retrain", "new_version", "gate", "rollout", "serving", "unanswered"]  # fmt: skip
    return _render("report_loop.html.j2", model=model, figure_png=png, rows=table, columns=columns)


def backtest_html(result: dict[str, Any]) -> str:
    """The policy backtest: live ROC AUC by month per policy with the oracle, and each trigger's trade-off."""
    png = backtest_png(result)
    policy_columns = ["policy", "description", "mean_live_auc", "mean_log_loss", "retrains", "fit_seconds",
                      "months_below_best", "alarms", "alarm_precision", "alarm_recall"]  # fmt: skip
    strategy_columns = ["strategy", "policy", "mean_live_auc", "retrains", "fit_seconds", "months_below_best"]
    trade = [
        {"trigger": name, **(curve["best"] or {})} for name, curve in result["tradeoff"]["curves"].items()
    ]
    months_table = [{"policy": name, **r} for name, rows in result["months"].items() for r in rows]
    month_columns = ["policy", "month", "serving", "live_auc", "oracle_auc", "estimated_auc",
                     "weighted_drift", "alarm", "reason", "retrain", "rollout"]  # fmt: skip
    return _render(
        "report_backtest.html.j2",
        dataset=result["dataset"],
        months=result["replay"]["months"],
        strategy=result["strategy"],
        harm_margin=result["harm_margin"],
        figure_png=png,
        policies=result["policies"],
        policy_columns=policy_columns,
        strategies=result["strategies"],
        strategy_columns=strategy_columns,
        tradeoff=result["tradeoff"],
        trade=trade,
        trade_columns=["trigger", "threshold", "alarms", "precision", "recall", "meets_target"],
        estimation=result["estimation"],
        estimation_columns=["month", "estimated_auc", "live_auc"],
        months_table=months_table,
        month_columns=month_columns,
    )
