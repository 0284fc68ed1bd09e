"""The model card's content: a registered version's card as a plain, JSON-able dict with stable keys.

``build`` gathers it from the config and the ingest, train and evaluate results; the known limits
are sentences of their own (with a little markdown: `code`), shared by both renderings.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipelines.model_card.text import label, names, num, when
from pipelines.util import field, plain

SCHEMA_VERSION = 1
# VARCHAR(5000) of model_versions.description in MLflow's SQL store (see the package docstring).
DESCRIPTION_LIMIT = 5000
ARTIFACT_DIR = "model_card"
CARD_TAG = "model_card"
FILES = {"markdown": "model_card.md", "html": "model_card.html", "json": "model_card.json"}
METRICS = (
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "f1",
    "precision",
    "recall",
    "accuracy",
    "expected_calibration_error",
)


def build(
    *,
    config,
    model_name: str,
    version: str | int,
    ingest: Mapping[str, Any],
    train: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    registered_at: datetime | str | int | float | None = None,
) -> dict[str, Any]:
    """The model card of one registered version as a plain, JSON-able dict with stable keys.

    ``ingest`` and ``train`` are those steps' results; ``evaluation`` is the full
    ``evaluation.json`` document. ``registered_at`` (a datetime, an ISO string or
    MLflow's ``creation_timestamp`` in milliseconds) defaults to now.
    """
    from pipelines import modeling, tracking

    dataset, training = config.dataset, config.training
    estimator = train.get("estimator") or training.estimator
    params = {
        **modeling.ESTIMATOR_DEFAULTS.get(estimator, {}),
        **training.params,
        **(train.get("best_params") or {}),
    }
    monotonic = dict(getattr(training, "monotonic", None) or {})
    mode = train.get("training_mode") or {}
    candidate = evaluation.get("candidate") or {}
    champion = evaluation.get("champion")
    fairness = evaluation.get("fairness")
    slice_config = _slice_config(config, fairness)
    card = {
        "schema_version": SCHEMA_VERSION,
        "model_name": model_name,
        "version": str(version),
        "registered_at": _timestamp(registered_at),
        "intended_use": getattr(dataset, "intended_use", "") or "",
        "training_data": _training_data(config, ingest, train),
        "model": {
            "estimator": estimator,
            "params": params,
            "search_params": train.get("best_params") or {},
            "monotonic": monotonic,
            "threshold": train.get("threshold"),
            "training_mode": mode.get("mode", training.mode),
            "warm_start_from": mode.get("from_version"),
            "code_version": train.get("code_version") or tracking.code_version(),
            "run_id": train.get("mlflow_run_id"),
            "model_uri": train.get("model_uri") or candidate.get("model_uri"),
            "features": {
                "numeric": list(dataset.features.numeric),
                "categorical": list(dataset.features.categorical),
            },
            "rows": train.get("rows") or {},
            "validation_metrics": train.get("validation") or {},
        },
        "metrics": {
            "split": "test",
            "rows": (candidate.get("metrics") or {}).get("rows"),
            "candidate": candidate.get("metrics") or {},
            "champion": (
                {"version": str(champion["version"]), "metrics": champion.get("metrics") or {}}
                if champion
                else None
            ),
        },
        "slices": _slices(evaluation.get("slices") or {}, fairness, slice_config),
        "fairness": _fairness(fairness, slice_config),
        "gate": _gate(evaluation.get("decision") or {}),
    }
    card["known_limits"] = _known_limits(config, card)
    return plain(card)


def _training_data(config, ingest: Mapping[str, Any], train: Mapping[str, Any]) -> dict[str, Any]:
    dataset = config.dataset
    provenance = getattr(dataset, "provenance", None)
    personal = getattr(dataset, "personal_data", None)
    columns = list(field(personal, "columns") or [])
    allowed = list(field(personal, "allowed_as_features") or [])
    features = set(dataset.features.all)
    snapshot = set(ingest.get("columns") or dataset.columns)
    return {
        "dataset": dataset.name,
        "description": dataset.description,
        "provenance": {
            "source": field(provenance, "source"),
            "owner": field(provenance, "owner"),
            "terms_of_use": field(provenance, "terms_of_use"),
            "license": field(provenance, "license"),
        },
        "source_kind": dataset.source.kind,
        "window": dict(ingest.get("window") or {}),
        "window_months": config.ingest.window_months,
        "interval": dict(ingest.get("interval") or {}),
        "time_column": dataset.time_column,
        "timezone": config.schedule.timezone,
        "rows": ingest.get("rows"),
        "rows_in_interval": ingest.get("rows_in_interval"),
        "dropped_unlabelled": ingest.get("dropped_unlabelled"),
        "data_hash": ingest.get("data_hash") or train.get("data_hash"),
        "label": {
            "name": dataset.target.name,
            "expression": dataset.target.expression,
            "required": list(dataset.target.required),
        },
        "personal_data": {
            "columns": columns,
            "allowed_as_features": allowed,
            "used_as_features": [c for c in columns if c in features],
            "used_as_slices": [c for c in columns if c in dataset.slices],
            "in_snapshot": [c for c in columns if c in snapshot],
            "any_used_as_feature": any(c in features for c in columns),
        },
    }


def _slice_config(config, fairness: dict[str, Any] | None) -> dict[str, Any]:
    """The slice check's settings: as evaluate recorded them, else from the config."""
    check = getattr(config.gate, "slices", None)
    recorded = fairness or {}
    return {
        "metric": recorded.get("metric") or field(check, "metric") or "roc_auc",
        "max_gap": recorded.get("max_gap", field(check, "max_gap")),
        "gating": bool(recorded.get("gating", field(check, "gating") or False)),
        "min_rows": recorded.get("min_rows", field(check, "min_rows")),
    }


def _slices(slices: dict[str, Any], fairness: dict[str, Any] | None, check: dict[str, Any]) -> dict[str, Any]:
    """Each slice column as a list of rows; ``scored`` says whether the slice check counted it."""
    metric = check["metric"]
    columns = {}
    for column, table in slices.items():
        unscored = (((fairness or {}).get("columns") or {}).get(column) or {}).get("unscored")
        rows = []
        for value, row in table.items():
            scores = dict(row.get(metric) or {})
            if unscored is not None:
                scored = value not in set(map(str, unscored))
            else:
                scored = scores.get("candidate") is not None and row["rows"] >= (check["min_rows"] or 0)
            rows.append(
                {
                    "value": str(value),
                    "rows": row.get("rows"),
                    "positive_rate": row.get("positive_rate"),
                    metric: scores,
                    "scored": scored,
                }
            )
        columns[column] = rows
    return {"metric": metric, "min_rows": check["min_rows"], "columns": columns}


def _fairness(fairness: dict[str, Any] | None, check: dict[str, Any]) -> dict[str, Any]:
    if not fairness:
        return {**check, "evaluated": False, "passed": None, "columns": {}}
    columns = {}
    for column, result in (fairness.get("columns") or {}).items():
        columns[column] = {
            "gap": result.get("gap"),
            "best": result.get("best"),
            "worst": result.get("worst"),
            "passed": result.get("passed"),
            "scored": result.get("scored"),
            "unscored": [str(v) for v in result.get("unscored") or []],
            "reason": result.get("reason"),
        }
    return {**check, "evaluated": True, "passed": fairness.get("passed"), "columns": columns}


def _gate(decision: dict[str, Any]) -> dict[str, Any]:
    return {
        "passed": decision.get("passed"),
        "metric": decision.get("metric"),
        "reason": decision.get("reason"),
        "checks": [dict(c) for c in decision.get("checks") or []],
        "approval_required": bool(decision.get("approval_required", False)),
        "approval_reason": decision.get("approval_reason"),
    }


def _known_limits(config, card: dict[str, Any]) -> list[dict[str, str]]:
    """The config's own limits, then what this version's data and evaluation show."""
    limits = [
        {"kind": "config", "text": str(text)} for text in getattr(config.dataset, "known_limits", None) or []
    ]
    fairness, slices = card["fairness"], card["slices"]
    metric = label(slices["metric"])
    for column, rows in slices["columns"].items():
        unscored = [r["value"] for r in rows if not r["scored"]]
        if unscored:
            floor = (
                f"fewer than {slices['min_rows']} test rows" if slices["min_rows"] else "too few test rows"
            )
            limits.append(
                {
                    "kind": "unscored_slices",
                    "text": f"{len(unscored)} of {len(rows)} {column} slices too small to score "
                    f"({floor} or one class only): {names(unscored)}; the model's quality there is unknown.",
                }
            )
    gaps = [(c, r) for c, r in fairness["columns"].items() if r.get("gap") is not None]
    for column, result in sorted(gaps, key=lambda item: -item[1]["gap"]):
        best, worst = result["best"] or {}, result["worst"] or {}
        allowed = fairness["max_gap"]
        verdict = "within" if result["passed"] else "WIDER than"
        verdict = f", {verdict} the allowed {allowed:.2f}" if allowed is not None else ""
        limits.append(
            {
                "kind": "slice_gap",
                "text": f"Largest {metric} gap by {column}: {result['gap']:.4f} between "
                f"{best.get('value')} ({num(best.get('score'))}) and {worst.get('value')} "
                f"({num(worst.get('score'))}){verdict}"
                f"{'' if fairness['gating'] else ' (reported, not gating)'}.",
            }
        )
    data = card["training_data"]
    window = data["window"]
    if window:
        limits.append(
            {
                "kind": "historical_window",
                "text": f"Trained on a historical window: {data['time_column']} from "
                f"{when(window.get('start'))} to {when(window.get('end'))} "
                f"({data['window_months']} months). Later data, other "
                "seasons and changes since then are not represented.",
            }
        )
    target = data["label"]
    required = ", ".join(target["required"])
    dropped = data["dropped_unlabelled"]
    text = (
        f"The label `{target['name']}` is `{target['expression']}` (true or false), a proxy fixed by config."
    )
    if required:
        text += (
            f" Rows without {required} cannot be labelled and were dropped"
            f"{f' ({dropped:,} in this window)' if isinstance(dropped, int) else ''}: "
            "the model says nothing about such cases."
        )
    limits.append({"kind": "label", "text": text})
    return limits


def _timestamp(value: datetime | str | int | float | None) -> str:
    if value is None:
        return datetime.now(UTC).isoformat(timespec="seconds")
    if isinstance(value, int | float):  # MLflow's creation_timestamp, in milliseconds
        return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="seconds")
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return str(value)
