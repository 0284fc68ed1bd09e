"""What the demo loop shows: a line per month while it runs, then the table, the JSON and the HTML."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def row_text(row: dict[str, Any]) -> str:
    """One month of the loop in a line, as it is printed while the replay runs."""
    return (
        f"drift {_fmt(row.get('drift_share'), '.0%')}"
        f" (weighted {_fmt(row.get('weighted_drift'), '.2f')}), live ROC AUC {_fmt(row.get('live_auc'))}"
        f" (estimated before labels {_fmt(row.get('estimated_auc'))},"
        f" never retrain {_fmt(row.get('never_retrain_auc'))}), {row.get('verdict', 'no verdict')},"
        f" retrain {row.get('retrain')}"
        f" {row.get('new_version', '')} {row.get('rollout', '')}".rstrip()
    )


def table_text(table: list[dict[str, Any]]) -> str:
    """The month-by-month table the command prints, then each month's reasons."""
    head = (
        f"{'month':8} {'rows':>7} {'w.drift':>7} {'est.AUC':>7} {'live AUC':>8} {'never':>6}"
        f" {'monthly':>7} {'verdict':11} {'retrain':8} {'new':10} {'rollout':15} serving"
    )
    lines = [head, "-" * len(head)]
    for r in table:
        lines.append(
            f"{r['month']:8} {r['rows']:>7} {_fmt(r.get('weighted_drift'), '.2f'):>7}"
            f" {_fmt(r.get('estimated_auc')):>7} {_fmt(r.get('live_auc')):>8}"
            f" {_fmt(r.get('never_retrain_auc')):>6} {_fmt(r.get('monthly_cron_auc')):>7}"
            f" {r.get('verdict', ''):11} {r.get('retrain', ''):8}"
            f" {r.get('new_version', '')!s:10.10} {r.get('rollout', '')!s:15.15} {r.get('serving', '')}"
        )

    def mean(key: str) -> float | None:
        values = [r[key] for r in table if r.get(key) is not None]
        return sum(values) / len(values) if values else None

    live, never, cron = mean("live_auc"), mean("never_retrain_auc"), mean("monthly_cron_auc")
    if live is not None and never is not None:
        lines.append(
            f"mean ROC AUC: with the loop {live:.3f}, never retraining {never:.3f},"
            f" a monthly cron {_fmt(cron)}"
            f" ({sum(1 for r in table if r.get('retrain') == 'yes')} retrains in {len(table)} months;"
            f" the cron retrains every month)"
        )
    lines.append("")
    lines += [f"{r['month']}: {r.get('reasons') or '-'}" for r in table]
    return "\n".join(lines)


def write_results(
    home: Path, settings, config, table: list[dict[str, Any]], approvals: list[dict[str, Any]]
) -> None:
    """The table and approvals as JSON, the HTML report, and the table printed with where to look."""
    from pipelines import reports, storage

    out = storage.join(settings.artifact_root, "loop")
    storage.write_json(storage.join(out, "loop.json"), table)
    storage.write_json(storage.join(out, "approvals.json"), approvals)
    html_uri = storage.write_text(
        storage.join(out, "loop.html"), reports.loop_html(config.registry.model_name, table)
    )
    print("\n" + table_text(table))
    print(f"\nreport: {html_uri}")
    print(
        "The runs, the asset events and the models stay in the stores: `make up` opens the Airflow UI"
        f" (DAG runs, Assets) and MLflow (experiments {config.registry.experiment} and"
        f" {config.registry.experiment}-monitoring)."
    )
