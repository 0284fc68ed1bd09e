"""The backtest's result as a text table (its HTML report is ``pipelines.reports.backtest_html``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def table_text(result: dict[str, Any]) -> str:
    """The policies side by side, the strategies, the trade-off and the estimate's error, as text."""
    head = (
        f"{'policy':30} {'mean AUC':>8} {'log loss':>8} {'retrains':>8} {'fit s':>6} {'<best':>5}"
        f" {'alarms':>6} {'prec':>5} {'recall':>6}"
    )
    replay = result["replay"]
    lines = [
        f"{result['dataset']}: {replay['first']} .. {replay['last']}, retraining {result['strategy']}",
        head,
        "-" * len(head),
    ]
    oracle_mean = float(np.mean(list(result["oracle"].values())))
    for p in result["policies"]:
        lines.append(
            f"{p['policy']:30} {_f(p['mean_live_auc']):>8} {_f(p['mean_log_loss']):>8} {p['retrains']:>8}"
            f" {p['fit_seconds']:>6.1f} {p['months_below_best']:>5} {p['alarms']:>6}"
            f" {_f(p['alarm_precision'], '.2f'):>5} {_f(p['alarm_recall'], '.2f'):>6}"
        )
    lines.append(f"{'oracle (best model each month)':30} {oracle_mean:>8.3f}")
    if result["strategies"]:
        lines += ["", f"{'training strategy':28} {'policy':12} {'mean AUC':>8} {'retrains':>8} {'fit s':>6}"]
        for s in result["strategies"]:
            lines.append(
                f"{s['strategy']:28} {s['policy']:12} {_f(s['mean_live_auc']):>8} {s['retrains']:>8}"
                f" {s['fit_seconds']:>6.1f}"
            )
    t = result["tradeoff"]
    lines += [
        "",
        f"trigger vs realised harm (live AUC > {t['margin']} below a fresh retrain next month),"
        f" {t['situations']} (model, month) situations, {t['harmful']} harmful:",
    ]
    for name, curve in t["curves"].items():
        b = curve["best"]
        if b:
            lines.append(
                f"  {name:36} best threshold {b['threshold']:<6g} precision {_f(b['precision'], '.2f')}"
                f" recall {_f(b['recall'], '.2f')} ({b['alarms']} alarms)"
                + ("" if b["meets_target"] else " (below 0.8/0.8)")
            )
    e = result["estimation"]
    lines.append("")
    lines.append(
        "estimated (CBPE, before labels) vs realised live ROC AUC:"
        f" mean absolute error {_f(e['mean_absolute_error'])}"
    )
    lines.append(
        "  " + "  ".join(f"{r['month']} {_f(r['estimated_auc'])}/{_f(r['live_auc'])}" for r in e["months"])
    )
    lines.append(f"{result['fits']} fits, {result['seconds']} s")
    return "\n".join(lines)
