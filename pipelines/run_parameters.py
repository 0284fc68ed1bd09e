"""The run parameters: what a manual run may override, each declared once.

A parameter is a name, the config field it overrides, a title for the form, and the DAGs whose
form offers it. Its type, choices and bounds are not written here: they come from the config
schema (``pipelines.config``), so the Airflow form (``mlops_airflow.dag_settings``), the CLI's
``--param`` and the config's own validation can never disagree. Free of Airflow, like the rest of
``pipelines``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class RunParameter:
    """One overridable config field, as a manual run's form offers it."""

    name: str
    path: tuple[str, ...]
    title: str
    dags: tuple[str, ...]
    description: str | None = None
    # the form's default when it is not the config's value as is (e.g. a derived share)
    default: Callable[[Any], Any] | None = None


TRAINING, DEPLOY, MONITORING = ("training",), ("deploy",), ("monitoring",)
PARAMETERS: tuple[RunParameter, ...] = (
    RunParameter("window_months", ("ingest", "window_months"), "Window (months)", TRAINING),
    RunParameter("estimator", ("training", "estimator"), "Estimator", TRAINING),
    RunParameter("search", ("training", "search", "enabled"), "Hyperparameter search", TRAINING),
    RunParameter("gate_min_value", ("gate", "min_value"), "Gate: minimum of the gate's metric", TRAINING),
    RunParameter("gate_max_drop", ("gate", "max_drop"), "Gate: largest allowed drop vs champion", TRAINING),
    RunParameter(
        "training_mode", ("training", "mode"), "Continual training", TRAINING,
        description="stateless: from scratch on the window; stateful: continue the champion on it.",
    ),
    RunParameter(
        "shuffle_labels", ("training", "shuffle_labels"), "Sanity check: shuffle labels", TRAINING,
        description="Train on permuted labels; the gate must reject such a model.",
    ),
    RunParameter(
        "version", ("deploy", "version"), "Model version", DEPLOY,
        description="Registered version to deploy. Empty: the version behind the challenger alias.",
    ),
    RunParameter("strategy", ("deploy", "rollout", "strategy"), "Rollout strategy", DEPLOY),
    RunParameter(
        "share", ("deploy", "rollout", "share"), "Challenger's share of traffic (canary, A/B)", DEPLOY,
        default=lambda config: config.deploy.rollout.effective_share,
    ),
    RunParameter(
        "min_detectable_effect", ("deploy", "rollout", "min_detectable_effect"),
        "Smallest change in error rate to detect", DEPLOY,
        description="Sets the sample size of the rollout test, fixed before traffic moves.",
    ),
    RunParameter("source", ("monitoring", "source"), "Rows to judge", MONITORING),
    RunParameter(
        "drift_share", ("monitoring", "drift", "share"),
        "Share of the model's importance that must drift for the window to drift", MONITORING,
    ),
)  # fmt: skip

BY_NAME: dict[str, RunParameter] = {p.name: p for p in PARAMETERS}
# name -> path in the config: what ``PipelineConfig.with_overrides`` applies
RUN_PARAMETERS: dict[str, tuple[str, ...]] = {p.name: p.path for p in PARAMETERS}


def for_dag(dag_id: str) -> list[RunParameter]:
    """The parameters a DAG's form offers, in declaration order."""
    return [p for p in PARAMETERS if dag_id in p.dags]


def value_at(config: BaseModel, path: tuple[str, ...]) -> Any:
    """The config's value at ``path``."""
    node: Any = config
    for part in path:
        node = getattr(node, part)
    return node


def default_of(parameter: RunParameter, config: BaseModel) -> Any:
    """What the form shows before anyone edits it: the config's value (or the declared default)."""
    return parameter.default(config) if parameter.default else value_at(config, parameter.path)


# JSON-schema keywords that carry over from the config schema to a form field
_CARRIED = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "description")


def field_schema(model: type[BaseModel], path: tuple[str, ...]) -> dict[str, Any]:
    """The JSON schema of the field at ``path`` of ``model``: type, choices and bounds.

    An optional field (``X | None``) keeps its bounds and gets ``type: [X, "null"]``. A field
    without bounds in the schema has none in the form either.
    """
    schema = _json_schema(model)
    definitions = schema.get("$defs", {})
    node = schema
    for part in path:
        node = _resolve(node, definitions)["properties"][part]
    node = _resolve(node, definitions)
    options = [_resolve(o, definitions) for o in node.get("anyOf", [])]
    if options:  # Optional[...]: the non-null option's bounds, and null allowed
        concrete = [o for o in options if o.get("type") != "null"]
        merged = {k: v for o in concrete for k, v in o.items()}
        types = [o["type"] for o in concrete if "type" in o]
        if any(o.get("type") == "null" for o in options):
            types.append("null")
        node = {**{k: v for k, v in node.items() if k != "anyOf"}, **merged, "type": types}
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    return {k: node[k] for k in _CARRIED if k in node}


@functools.cache
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema, built once per process (about 12 ms; a DAG file asks per field)."""
    return model.model_json_schema()


def _resolve(node: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        node = {**definitions[node["$ref"].rsplit("/", 1)[-1]], **rest}
    if "allOf" in node and len(node["allOf"]) == 1:
        rest = {k: v for k, v in node.items() if k != "allOf"}
        node = {**_resolve(node["allOf"][0], definitions), **rest}
    return node
