"""Model card: what a registered version is for, what it learned from, how well it does and where not.

``build`` gathers the card from the config and the ingest, train and evaluate
results into a plain JSON-able dict; ``to_markdown`` renders it for the model
version's description in MLflow (kept under MLflow's size limit), ``to_html``
as a standalone page; ``publish`` stores all three with the version.

The description limit: MLflow 3.17 has no check of its own on a model
version's description, but its SQL store declares ``model_versions.description``
as ``VARCHAR(5000)`` (``mlflow/store/model_registry/dbmodels/models.py``).
PostgreSQL and MySQL reject a longer value; SQLite stores it anyway. The
markdown is therefore kept within 5,000 UTF-8 bytes (hence characters too):
slice tables shrink to the best and worst slices first, then free text, and
the full card is always in the run's artifacts.
"""

from __future__ import annotations

import html
import math
from datetime import UTC, datetime
from typing import Any

from pipelines.util import field, plain

SCHEMA_VERSION = 1
# VARCHAR(5000) of model_versions.description in MLflow's SQL store (see the module docstring).
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
_NAMES_SHOWN = 8  # values listed by name before "+N more"
# Slices kept at each end of a table as the description shrinks (None: all; 0: no table).
_KEEP_LEVELS: tuple[int | None, ...] = (None, 8, 5, 3, 2, 1, 0)
_SMALL_TABLE = 5  # rows: always shown whole


# -- build ------------------------------------------------------------------------------------------
def build(
    *,
    config,
    model_name: str,
    version: str | int,
    ingest: dict[str, Any],
    train: dict[str, Any],
    evaluation: dict[str, Any],
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


def _training_data(config, ingest: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
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
    metric = _label(slices["metric"])
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
                    f"({floor} or one class only): {_names(unscored)}; the model's quality there is unknown.",
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
                f"{best.get('value')} ({_num(best.get('score'))}) and {worst.get('value')} "
                f"({_num(worst.get('score'))}){verdict}"
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
                f"{_when(window.get('start'))} to {_when(window.get('end'))} "
                f"({data['window_months']} months). Later data, other "
                "seasons and changes since then are not represented.",
            }
        )
    label = data["label"]
    required = ", ".join(label["required"])
    dropped = data["dropped_unlabelled"]
    text = f"The label `{label['name']}` is `{label['expression']}` (true or false), a proxy fixed by config."
    if required:
        text += (
            f" Rows without {required} cannot be labelled and were dropped"
            f"{f' ({dropped:,} in this window)' if isinstance(dropped, int) else ''}: "
            "the model says nothing about such cases."
        )
    limits.append({"kind": "label", "text": text})
    return limits


# -- markdown ---------------------------------------------------------------------------------------
def to_markdown(card: dict[str, Any], *, limit: int = DESCRIPTION_LIMIT) -> str:
    """The card as markdown for the model version's description, at most ``limit`` UTF-8 bytes.

    Too long: the longest slice table shrinks first, to its 8, 5, 3, 2, 1 best and worst
    slices and then to a note, and so on until the card fits; then free text is shortened.
    Last resort, a hard cut. The full card is always in the run's artifacts.
    """
    metric = card["slices"]["metric"]
    tables = card["slices"]["columns"]
    text = ""
    for brief in (False, True):
        keep: dict[str, int | None] = dict.fromkeys(tables)
        while True:
            text = _markdown(card, keep, brief)
            if _size(text) <= limit:
                return text
            shown = {c: len(_top_bottom(tables[c], metric, k)[0]) for c, k in keep.items() if k != 0}
            if not shown:
                break
            column = max(shown, key=shown.get)
            keep[column] = _KEEP_LEVELS[_KEEP_LEVELS.index(keep[column]) + 1]
    note = "\n\n_(cut to fit the description limit: see the full card in the run's artifacts)_\n"
    budget = limit - _size(note)
    return text.encode()[:budget].decode(errors="ignore").rstrip() + note


def _markdown(card: dict[str, Any], keep: dict[str, int | None], brief: bool) -> str:
    """One rendering: ``keep[column]`` best and worst slices (None: all, 0: none); ``brief`` text."""
    data, model, metrics, gate = card["training_data"], card["model"], card["metrics"], card["gate"]
    fairness, slices = card["fairness"], card["slices"]
    metric = slices["metric"]
    cut = 160 if brief else None
    provenance, features = data["provenance"], model["features"]
    params = ", ".join(f"{k}={_num(v)}" for k, v in model["params"].items()) or "defaults"
    mode = model["training_mode"]
    if model["warm_start_from"]:
        mode += f" (continued from v{model['warm_start_from']})"
    out = [
        _md(f"# Model card: {card['model_name']} v{card['version']}"),
        "",
        _md(
            f"Registered {_when(card['registered_at'])}; gate **{_verdict(gate['passed'])}**. "
            f"Full card (every slice): `{ARTIFACT_DIR}/{FILES['html']}` and `{FILES['json']}` "
            f"in run `{model['run_id']}`."
        ),
        "",
        "## Intended use",
        "",
        _md(_cut(card["intended_use"] or "Not stated in the dataset config.", cut)),
        "",
        "## Training data",
        "",
        *_md_table(
            ["item", "value"],
            [
                ["Dataset", f"{data['dataset']}: {_cut(data['description'], cut)}"],
                ["Source", _cut(provenance["source"], cut)],
                ["Owner", _cut(provenance["owner"], cut)],
                ["Terms of use", _cut(provenance["terms_of_use"], cut)],
                ["License", provenance["license"] or "not stated"],
                ["Window", f"{_when(data['window'].get('start'))} to {_when(data['window'].get('end'))}"],
                ["Rows", f"{_num(data['rows'])} ({_num(data['dropped_unlabelled'])} dropped as unlabelled)"],
                ["Data hash", _code(data["data_hash"])],
                ["Label", f"{_code(data['label']['name'])} = {_code(data['label']['expression'])}"],
                ["Personal data", _personal_text(data["personal_data"])],
            ],
        ),
        "",
        "## Model",
        "",
        *_md_table(
            ["item", "value"],
            [
                ["Estimator", model["estimator"]],
                ["Params", params],
                *([["Monotonic", _mapping(model["monotonic"])]] if model["monotonic"] else []),
                ["Threshold", _num(model["threshold"])],
                ["Training mode", mode],
                ["Code version", _code(model["code_version"])],
                ["Numeric features", ", ".join(features["numeric"]) or "none"],
                ["Categorical features", ", ".join(features["categorical"]) or "none"],
            ],
        ),
    ]
    champion = metrics["champion"]
    out += ["", _md(f"## Metrics (test split, {_num(metrics['rows'])} rows)"), ""]
    out += _md_table(
        ["metric", "candidate", *([f"champion v{champion['version']}"] if champion else []), "validation"],
        [
            [
                m,
                _num(metrics["candidate"].get(m)),
                *([_num(champion["metrics"].get(m))] if champion else []),
                _num(model["validation_metrics"].get(m)),
            ]
            for m in METRICS
            if m in metrics["candidate"]
        ],
    )
    out += ["", f"## Gate: {_verdict(gate['passed'])}", "", _md(_cut(gate["reason"], cut)), ""]
    out += _md_table(
        ["check", "candidate", "champion", "threshold", "passed", "note"],
        [
            [
                c.get("check"),
                _num(c.get("candidate")),
                _num(c.get("champion")),
                _num(c.get("threshold")),
                _yes(c.get("passed")),
                _cut(c.get("reason") or "", 120 if brief else None),
            ]
            for c in gate["checks"]
        ],
    )
    if gate["approval_required"]:
        out += ["", _md(f"**Approval required before rollout:** {_cut(gate['approval_reason'], cut)}")]
    out += ["", f"## Slice check ({_label(metric)} gap)", "", _md(_fairness_line(fairness)), ""]
    if fairness["columns"]:
        out += _md_table(
            ["column", "gap", "best", "worst", "scored", "not scored", "passed"],
            [
                [
                    column,
                    _num(r["gap"]),
                    _best_worst(r["best"]),
                    _best_worst(r["worst"]),
                    _num(r["scored"]),
                    _names(r["unscored"], 4) or "-",
                    _yes(r["passed"]),
                ]
                for column, r in fairness["columns"].items()
            ],
        )
    out += ["", f"## Slices ({_label(metric)})", ""]
    for column, table in slices["columns"].items():
        if keep.get(column) == 0:
            out += [f"_{_md(column)}: {len(table)} slices, left out to fit the description._", ""]
            continue
        shown, note = _top_bottom(table, metric, keep.get(column))
        models = sorted({m for r in table for m in r[metric]}, key=lambda m: (m != "candidate", m))
        out += [_md(f"**{column}**"), ""]
        out += _md_table(
            [column, "rows", "pos. rate", *models],
            [
                [
                    r["value"] + ("" if r["scored"] else " \\*"),
                    _num(r["rows"]),
                    _num(r["positive_rate"], 3),
                    *(_num(r[metric].get(m)) for m in models),
                ]
                for r in shown
            ],
        )
        out += ["", note, ""] if note else [""]
    if any(not r["scored"] for t in slices["columns"].values() for r in t):
        out += ["\\* not scored by the slice check (too few rows or one class)", ""]
    out += ["## Known limits", ""]
    out += [_md(f"- {_cut(limit['text'], cut)}") for limit in card["known_limits"]]
    return "\n".join(out).strip() + "\n"


def _top_bottom(rows: list[dict[str, Any]], metric: str, keep: int | None):
    """All rows, or the ``keep`` best and worst slices by candidate score, and a note saying so.

    Best and worst among the slices the slice check scored; without two of those, among
    all slices with a score. A small table is always shown whole.
    """
    if keep is None or len(rows) <= max(2 * keep + 1, _SMALL_TABLE):
        return rows, None
    scores = [r for r in rows if r[metric].get("candidate") is not None]
    checked = [r for r in scores if r["scored"]]
    pool = sorted(checked if len(checked) >= 2 else scores, key=lambda r: -r[metric]["candidate"])
    shown = pool if len(pool) <= 2 * keep else [*pool[:keep], *pool[-keep:]]
    return shown, (
        f"_Showing the {keep} best and {keep} worst of {len(rows)} slices by candidate score; "
        f"{len(rows) - len(shown)} more in the full card._"
    )


def _md_table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """A markdown table; each cell is made safe with ``_md``."""
    lines = ["| " + " | ".join(_md(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md(cell, table=True) for cell in row) + " |" for row in rows]
    return lines


def _md(value: Any, table: bool = False) -> str:
    """Markdown-safe text on one line: raw HTML escaped outside `code` spans; in a table, no pipes."""
    text = "" if value is None else " ".join(str(value).split())
    pieces = text.split("`")
    if len(pieces) % 2 == 0:  # an unbalanced backtick: treat it as text
        pieces = [text.replace("`", "'")]
    text = "`".join(
        p.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p
        for i, p in enumerate(pieces)
    )
    return text.replace("|", "\\|") if table else text


def _code(value: Any) -> str:
    return "`" + ("" if value is None else str(value)).replace("`", "'") + "`"


def _cut(value: Any, cut: int | None) -> str:
    text = "" if value is None else " ".join(str(value).split())
    return text[: cut - 3].rstrip() + "..." if cut and len(text) > cut else text


def _personal_text(personal: dict[str, Any]) -> str:
    if not personal["columns"]:
        return "none declared"
    parts = []
    for column in personal["columns"]:
        if column in personal["used_as_features"]:
            parts.append(f"{column}: used as a feature (allowed by config)")
        else:
            where = "in the snapshot" if column in personal["in_snapshot"] else "not in the training data"
            parts.append(f"{column}: not used as a feature ({where})")
    return "; ".join(parts)


def _fairness_line(fairness: dict[str, Any]) -> str:
    if not fairness["evaluated"]:
        return "Not evaluated for this version."
    if fairness["passed"]:
        verdict = "Within the limit"
    else:
        verdict = "Gap too wide" + (": the gate rejects" if fairness["gating"] else " (reported only)")
    mode = "gating" if fairness["gating"] else "reported, not gating"
    rows = f", slices with at least {fairness['min_rows']} rows" if fairness.get("min_rows") else ""
    return f"**{verdict}**: best minus worst slice at most {_num(fairness['max_gap'])} ({mode}{rows})."


def _best_worst(entry: dict[str, Any] | None) -> str:
    return f"{entry['value']} {_num(entry['score'])}" if entry else "-"


# -- html -------------------------------------------------------------------------------------------
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1f2328;
line-height:1.45}h1{margin-bottom:.2em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;
margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #d0d7de;
padding:.25em .6em;vertical-align:top}th{background:#f6f8fa;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#1a7f37;font-weight:bold}
.fail{color:#cf222e;font-weight:bold}.muted{color:#656d76}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px}.kv th{width:11em}
svg{display:block;margin:.5em 0 1em}"""


def to_html(card: dict[str, Any]) -> str:
    """The card as a standalone page: inline CSS and SVG charts, no scripts, no external assets."""
    data, model, metrics, gate = card["training_data"], card["model"], card["metrics"], card["gate"]
    fairness, slices = card["fairness"], card["slices"]
    metric = slices["metric"]
    e = _h
    provenance, personal = data["provenance"], data["personal_data"]
    title = f"Model card: {e(card['model_name'])} v{e(card['version'])}"
    parts = [
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="muted">Registered {e(_when(card["registered_at"]))}; '
        f"gate {_verdict_html(gate['passed'])}; "
        f"run <code>{e(model['run_id'])}</code>; model <code>{e(model['model_uri'])}</code>.</p>",
        "<h2>Intended use</h2>",
        f"<p>{e(card['intended_use'] or 'Not stated in the dataset config.')}</p>",
        "<h2>Training data</h2>",
        _kv(
            [
                ("Dataset", f"<b>{e(data['dataset'])}</b>: {e(data['description'])}"),
                ("Source", e(provenance["source"])),
                ("Owner", e(provenance["owner"])),
                ("Terms of use", e(provenance["terms_of_use"])),
                ("License", e(provenance["license"] or "not stated")),
                (
                    "Window",
                    f"{e(_when(data['window'].get('start')))} to {e(_when(data['window'].get('end')))} "
                    f"({e(data['window_months'])} months of <code>{e(data['time_column'])}</code>)",
                ),
                (
                    "Rows",
                    f"{_num(data['rows'])} ({_num(data['rows_in_interval'])} in the run's interval, "
                    f"{_num(data['dropped_unlabelled'])} dropped as unlabelled)",
                ),
                ("Data hash", f"<code>{e(data['data_hash'])}</code>"),
                (
                    "Label",
                    f"<code>{e(data['label']['name'])}</code> = "
                    f"<code>{e(data['label']['expression'])}</code>",
                ),
                ("Personal data", e(_personal_text(personal))),
            ]
        ),
        "<h2>Model</h2>",
        _kv(
            [
                ("Estimator", e(model["estimator"])),
                ("Params", e(", ".join(f"{k}={_num(v)}" for k, v in model["params"].items()) or "defaults")),
                *([("Monotonic", e(_mapping(model["monotonic"])))] if model["monotonic"] else []),
                ("Threshold", _num(model["threshold"])),
                (
                    "Training mode",
                    e(model["training_mode"])
                    + (
                        f" (continued from v{e(model['warm_start_from'])})"
                        if model["warm_start_from"]
                        else ""
                    ),
                ),
                ("Code version", f"<code>{e(model['code_version'])}</code>"),
                ("Numeric features", e(", ".join(model["features"]["numeric"]))),
                ("Categorical features", e(", ".join(model["features"]["categorical"]))),
                ("Split rows", e(_mapping(model["rows"]))),
            ]
        ),
    ]
    champion = metrics["champion"]
    headers = ["metric", "candidate (test)"]
    headers += [f"champion v{champion['version']} (test)"] if champion else []
    headers += ["candidate (validation)"]
    rows = [
        [
            e(m),
            _num(metrics["candidate"].get(m)),
            *([_num(champion["metrics"].get(m))] if champion else []),
            _num(model["validation_metrics"].get(m)),
        ]
        for m in METRICS
        if m in metrics["candidate"]
    ]
    parts += [f"<h2>Metrics (test split, {_num(metrics['rows'])} rows)</h2>", _html_table(headers, rows)]
    parts += [
        f"<h2>Gate: {_verdict_html(gate['passed'])}</h2>",
        f"<p>{e(gate['reason'])}</p>",
        _html_table(
            ["check", "metric", "candidate", "champion", "threshold", "delta", "passed", "note"],
            [
                [
                    e(c.get("check")),
                    e(c.get("metric") or ""),
                    _num(c.get("candidate")),
                    _num(c.get("champion")),
                    _num(c.get("threshold")),
                    _num(c.get("delta")),
                    _verdict_html(c.get("passed"), yes="yes", no="no"),
                    e(c.get("reason") or ""),
                ]
                for c in gate["checks"]
            ],
        ),
    ]
    if gate["approval_required"]:
        parts.append(f"<p><b>Approval required before rollout:</b> {e(gate['approval_reason'])}</p>")
    parts += [
        f"<h2>Slice check ({e(_label(metric))} gap)</h2>",
        f"<p>{_md_to_html(_fairness_line(fairness))}</p>",
    ]
    if fairness["columns"]:
        parts.append(
            _html_table(
                ["column", "gap", "best", "worst", "scored", "not scored", "passed"],
                [
                    [
                        e(column),
                        _num(r["gap"]),
                        e(_best_worst(r["best"])),
                        e(_best_worst(r["worst"])),
                        _num(r["scored"]),
                        e(", ".join(r["unscored"]) or "-"),
                        _verdict_html(r["passed"], yes="yes", no="no"),
                    ]
                    for column, r in fairness["columns"].items()
                ],
            )
        )
    parts.append(f"<h2>Slices ({e(_label(metric))})</h2>")
    for column, table in slices["columns"].items():
        models = sorted({m for r in table for m in r[metric]}, key=lambda m: (m != "candidate", m))
        parts += [
            f"<h3>By {e(column)}</h3>",
            _slice_svg(column, table, metric, fairness),
            _html_table(
                [column, "rows", "positive rate", *models, "scored"],
                [
                    [
                        e(r["value"]),
                        _num(r["rows"]),
                        _num(r["positive_rate"], 3),
                        *(_num(r[metric].get(m)) for m in models),
                        "yes" if r["scored"] else '<span class="muted">no</span>',
                    ]
                    for r in table
                ],
            ),
        ]
    parts += ["<h2>Known limits</h2>", "<ul>"]
    parts += [f"<li>{_md_to_html(limit['text'])}</li>" for limit in card["known_limits"]]
    parts += ["</ul>", "</body></html>"]
    return "\n".join(parts)


def _slice_svg(column: str, rows: list[dict[str, Any]], metric: str, fairness: dict[str, Any]) -> str:
    """Horizontal bars of the candidate's score per slice, best first; unscored slices in grey."""
    limit = 40
    ordered = sorted(
        rows, key=lambda r: (r[metric].get("candidate") is None, -(r[metric].get("candidate") or 0))
    )
    shown = ordered[:limit]
    if not shown:
        return ""
    scores = [r[metric]["candidate"] for r in shown if r[metric].get("candidate") is not None]
    low = min([0.5, *scores])
    label_w, bar_w, row_h, top = 130, 420, 18, 22
    height = top + row_h * len(shown) + 10
    x = lambda v: label_w + (v - low) / (1 - low) * bar_w  # noqa: E731
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" height="{height}" '
        f'role="img" aria-label="{_h(_label(metric))} by {_h(column)}" font-family="system-ui,sans-serif" '
        'font-size="11">',
        f'<text x="{label_w}" y="12" fill="#656d76">candidate {_h(_label(metric))} by {_h(column)} '
        f"(axis {low:.2f} to 1.00)</text>",
    ]
    gap = (fairness["columns"].get(column) or {}) if fairness else {}
    if gap.get("best") and fairness.get("max_gap") is not None:
        floor = gap["best"]["score"] - fairness["max_gap"]
        if floor > low:
            out.append(
                f'<line x1="{x(floor):.1f}" x2="{x(floor):.1f}" y1="{top - 4}" y2="{height - 6}" '
                'stroke="#cf222e" stroke-dasharray="3,3"><title>best minus the allowed gap</title></line>'
            )
    for i, r in enumerate(shown):
        y = top + i * row_h
        score = r[metric].get("candidate")
        out.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_h(r["value"][:20])}</text>')
        if score is None:
            out.append(
                f'<text x="{label_w + 4}" y="{y + 12}" fill="#8c959f">not scored ({r["rows"]} rows)</text>'
            )
            continue
        colour = "#0969da" if r["scored"] else "#8c959f"
        out.append(
            f'<rect x="{label_w}" y="{y + 2}" width="{max(x(score) - label_w, 1):.1f}" height="{row_h - 5}" '
            f'fill="{colour}"><title>{_h(r["value"])}: {score:.4f}, {r["rows"]} rows</title></rect>'
        )
        out.append(f'<text x="{x(score) + 4:.1f}" y="{y + 12}">{score:.3f}</text>')
    out.append("</svg>")
    if len(rows) > limit:
        out.append(f'<p class="muted">Chart: the {limit} best of {len(rows)} slices; the table has all.</p>')
    return "".join(out)


def _kv(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><th>{_h(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _html_table(headers: list[str], rows: list[list[str]]) -> str:
    """Cells are already HTML; numbers (digits, n/a) are right-aligned."""
    head = "".join(f"<th>{_h(h)}</th>" for h in headers)

    def cell(value: str) -> str:
        numeric = value == "n/a" or value.replace(",", "").replace(".", "").lstrip("-").isdigit()
        return f'<td class="n">{value}</td>' if numeric else f"<td>{value}</td>"

    body = "".join("<tr>" + "".join(cell(str(v)) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_to_html(text: str) -> str:
    """The little markdown the shared sentences use (**bold**, `code`), as escaped HTML."""
    pieces = html.escape(text).split("`")
    joined = "".join(p if i % 2 == 0 else f"<code>{p}</code>" for i, p in enumerate(pieces))
    bold = joined.split("**")
    return "".join(p if i % 2 == 0 else f"<b>{p}</b>" for i, p in enumerate(bold))


def _verdict_html(passed: Any, yes: str = "PASSED", no: str = "REJECTED") -> str:
    if passed is None:
        return '<span class="muted">n/a</span>'
    return f'<span class="pass">{yes}</span>' if passed else f'<span class="fail">{no}</span>'


def _h(value: Any) -> str:
    return html.escape("" if value is None else str(value))


# -- publish ----------------------------------------------------------------------------------------
def publish(
    client, *, model_name: str, version: str | int, run_id: str, card: dict[str, Any]
) -> dict[str, Any]:
    """Store the card with the version: run artifacts, the version's description and a tag.

    Logs ``model_card/model_card.{md,html,json}`` to the version's run, sets the version's
    description to the markdown and the tag ``model_card`` to the folder's ``runs:/`` URI.
    A retry overwrites the same three files and sets the same values: nothing is duplicated.
    """
    version = str(version)
    markdown = to_markdown(card)
    client.log_text(run_id, markdown, f"{ARTIFACT_DIR}/{FILES['markdown']}")
    client.log_text(run_id, to_html(card), f"{ARTIFACT_DIR}/{FILES['html']}")
    client.log_dict(run_id, card, f"{ARTIFACT_DIR}/{FILES['json']}")
    client.update_model_version(model_name, version, description=markdown)
    folder = f"runs:/{run_id}/{ARTIFACT_DIR}"
    client.set_model_version_tag(model_name, version, CARD_TAG, folder)
    stored = client.get_run(run_id).info.artifact_uri.rstrip("/") + f"/{ARTIFACT_DIR}"
    return {
        "uri": folder,
        **{kind: f"{folder}/{name}" for kind, name in FILES.items()},
        "artifact_uri": stored,
        "tag": {CARD_TAG: folder},
        "description_bytes": _size(markdown),
    }


# -- formatting helpers -----------------------------------------------------------------------------


def _timestamp(value: datetime | str | int | float | None) -> str:
    if value is None:
        return datetime.now(UTC).isoformat(timespec="seconds")
    if isinstance(value, int | float):  # MLflow's creation_timestamp, in milliseconds
        return datetime.fromtimestamp(value / 1000, UTC).isoformat(timespec="seconds")
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat(timespec="seconds")
    return str(value)


def _when(value: str | None) -> str:
    """An ISO timestamp as ``YYYY-MM-DD HH:MM UTC``; anything else as given."""
    if not value:
        return "n/a"
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return str(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: Any, digits: int = 4) -> str:
    """Floats to ``digits`` decimals, integers with thousands separators, None/NaN as n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _yes(value: Any) -> str:
    return "n/a" if value is None else ("yes" if value else "**no**")


def _verdict(passed: Any) -> str:
    return "n/a" if passed is None else ("PASSED" if passed else "REJECTED")


def _label(metric: str) -> str:
    return {"roc_auc": "ROC AUC", "pr_auc": "PR AUC"}.get(metric, metric)


def _names(values: list[str], shown: int = _NAMES_SHOWN) -> str:
    values = list(values)
    more = f" (+{len(values) - shown} more)" if len(values) > shown else ""
    return ", ".join(values[:shown]) + more


def _mapping(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_num(v)}" for k, v in values.items())


def _size(text: str) -> int:
    return len(text.encode("utf-8"))
