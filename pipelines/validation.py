"""Great Expectations 1.x behind a thin adapter: a DataFrame, a list of expectations, a report.

The suite is a readable YAML list of ``{type, kwargs}`` entries (the
expectation's snake_case name and its arguments). Keeping GX behind this one
function means a GX major upgrade touches one file, not the pipeline.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlparse

import pandas as pd

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult
    from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

log = logging.getLogger(__name__)
# GX logs every API function it registers at INFO; under Airflow's logging that floods the task log.
logging.getLogger("great_expectations").setLevel(logging.WARNING)
_SITE = "mlops_site"  # "local_site" already exists in an ephemeral context
_COLUMN_KEYS = ("column", "column_A", "column_B", "column_list")

# Bands for the checks against the champion's training data (the reference profile).
MEAN_BAND = 1.0  # the mean must lie within [q01 - w, q99 + w] where w = q99 - q01 of the reference
MAX_NEW_CATEGORY_SHARE = 0.10  # at most this share of rows may carry categories unseen in training
MAX_NULL_INCREASE = 0.10  # null fraction may exceed the reference's by at most this much
SPARSE_NULL_FRACTION = 0.5  # columns at least this null in training get no null-increase check
# A categorical feature whose distinct values fall below this share of the reference's has collapsed
# (a join that stopped matching, a default written everywhere), not drifted.
MIN_CARDINALITY_SHARE = 0.2


def _columns(kwargs: dict[str, Any]) -> list[str]:
    cols: list[str] = []
    for key in _COLUMN_KEYS:
        value = kwargs.get(key)
        if value is not None:
            cols.extend(value if isinstance(value, list | tuple) else [value])
    return cols


def _errors(info: dict[str, Any] | None) -> list[str]:
    """GX reports exceptions either flat or keyed by metric id."""
    if not info:
        return []
    infos = [info] if "raised_exception" in info else info.values()
    return sorted({i["exception_message"] for i in infos if i.get("raised_exception")})


def _url_to_path(url: str | None) -> str | None:
    return unquote(urlparse(url).path) if url else None


def build_expectations(spec: list[dict[str, Any]]) -> list[Any]:
    """Turn ``{type, kwargs}`` entries into GX expectation objects; a bad entry is a config error."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    expectations = []
    for i, entry in enumerate(spec):
        if not isinstance(entry, dict) or "type" not in entry:
            raise ConfigError(f"expectation #{i + 1} needs a 'type': {entry!r}")
        try:
            config = ExpectationConfiguration(type=entry["type"], kwargs=dict(entry.get("kwargs") or {}))
            expectations.append(config.to_domain_obj())
        except Exception as exc:
            raise ConfigError(f"expectation #{i + 1} ({entry['type']}) is invalid: {exc}") from exc
    return expectations


def without_columns(spec: list[dict[str, Any]], columns: set[str]) -> list[dict[str, Any]]:
    """The suite minus the expectations about ``columns`` (e.g. the label, for rows to score)."""
    kept = []
    for entry in spec:
        kwargs = entry.get("kwargs") or {}
        named = {kwargs.get("column"), *(kwargs.get("column_list") or [])}
        if not named & columns:
            kept.append(entry)
    return kept


def validate_frame(
    frame: pd.DataFrame, spec: list[dict[str, Any]], suite_name: str, docs_dir: str
) -> dict[str, Any]:
    """Validate ``frame`` against ``spec``; return a JSON-ready report and build Data Docs in ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    expectations = build_expectations(spec)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        _SITE,
        {  # type: ignore[typeddict-unknown-key]  # GX's TypedDict is incomplete; SiteBuilder takes this key
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": os.path.abspath(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("pandas")
        .add_dataframe_asset("snapshot")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=suite_name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    order = {e.id: i for i, e in enumerate(suite.expectations)}

    def position(res: ExpectationValidationResult) -> int:
        # every result of a suite run carries the configuration of its expectation
        assert res.expectation_config is not None
        return order.get(res.expectation_config.id, 0)

    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
    )
    outcome = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")

    present = set(map(str, frame.columns))
    results = []
    for res in sorted(outcome.results, key=position):
        data: dict[str, Any] = res.to_json_dict()
        config, detail = data["expectation_config"], data.get("result") or {}
        kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
        cols = _columns(kwargs)
        results.append(
            {
                "expectation_type": config["type"],
                "columns": cols,
                "kwargs": kwargs,
                "success": bool(data["success"]),
                "missing_columns": [c for c in cols if c not in present],
                "observed_value": detail.get("observed_value"),
                "element_count": detail.get("element_count"),
                "unexpected_count": detail.get("unexpected_count"),
                "unexpected_percent": detail.get("unexpected_percent"),
                "partial_unexpected_list": (detail.get("partial_unexpected_list") or [])[:10],
                "errors": _errors(data.get("exception_info")),
            }
        )
    context.build_data_docs(site_names=[_SITE])
    # the keys of the validation results store are ValidationResultIdentifiers (its key class)
    result_key = cast("ValidationResultIdentifier", context.validation_results_store.list_keys()[0])
    return {
        "success": bool(outcome.success),
        "suite_name": suite_name,
        "statistics": outcome.to_json_dict()["statistics"],
        "results": results,
        "data_docs": {
            "index_html": _url_to_path(context.get_docs_sites_urls(site_name=_SITE)[0]["site_url"]),
            "validation_html": _url_to_path(
                context.get_docs_sites_urls(resource_identifier=result_key, site_name=_SITE)[0]["site_url"]
            ),
        },
    }


def describe_failure(result: dict[str, Any]) -> str:
    """One line naming the failed expectation, its columns and what was wrong."""
    name = result["expectation_type"]
    cols = ", ".join(result["columns"]) or "table"
    if result["missing_columns"]:
        return f"{name}({cols}): column {', '.join(map(repr, result['missing_columns']))} is missing"
    if result["errors"]:
        return f"{name}({cols}): {result['errors'][0]}"
    if result.get("unexpected_count"):
        sample = result["partial_unexpected_list"][:5]
        return (
            f"{name}({cols}): {result['unexpected_count']} unexpected values "
            f"({result['unexpected_percent']:.2f}%), e.g. {sample}"
        )
    bounds = {
        k: v for k, v in result["kwargs"].items() if k in ("min_value", "max_value", "value_set", "type_list")
    }
    return f"{name}({cols}): observed {result['observed_value']!r}, expected {bounds}"


def reference_expectations(
    profile: dict[str, Any], frame: pd.DataFrame | None = None
) -> list[dict[str, Any]]:
    """Checks of a new snapshot (``frame``) against the training data of the current champion.

    They catch broken data (a unit change, a column of nulls, a renamed
    category set), not ordinary drift: the bands are wide on purpose, and
    drift has its own monitor.
    """
    spec: list[dict[str, Any]] = []
    for col, stats in profile.get("numeric", {}).items():
        q = stats["quantiles"]
        width = q["0.99"] - q["0.01"]
        if width > 0:
            spec.append(
                {
                    "type": "expect_column_mean_to_be_between",
                    "kwargs": {
                        "column": col,
                        "min_value": q["0.01"] - MEAN_BAND * width,
                        "max_value": q["0.99"] + MEAN_BAND * width,
                    },
                }
            )
        # A mostly-missing column (wind gusts are reported only when gusty: 59-87% null by month)
        # swings more than any fixed band; only columns mostly present in training are checked.
        if stats["null_fraction"] < SPARSE_NULL_FRACTION:
            spec.append(
                {
                    "type": "expect_column_values_to_not_be_null",
                    "kwargs": {
                        "column": col,
                        "mostly": round(max(0.0, 1 - stats["null_fraction"] - MAX_NULL_INCREASE), 6),
                    },
                }
            )
    for col, stats in profile.get("categorical", {}).items():
        spec.append(
            {
                "type": "expect_column_values_to_be_in_set",
                "kwargs": {
                    "column": col,
                    "value_set": _known_categories(stats["frequencies"], frame, col),
                    "mostly": 1 - MAX_NEW_CATEGORY_SHARE,
                },
            }
        )
    return spec


def _known_categories(frequencies: dict[str, float], frame: pd.DataFrame | None, column: str) -> list[Any]:
    """The champion's categories, as the profile keeps them (the strings the model reads) and as the
    snapshot holds them (a boolean or integer source column): a value is known when the model would
    read it as one of them."""
    known = sorted(frequencies)
    if frame is None or column not in frame.columns:
        return known
    values = pd.Series(frame[column].dropna().unique())
    as_read = values.astype("string")  # as modeling.model_input reads a category
    return known + [v for v in values[as_read.isin(known)].tolist() if not isinstance(v, str)]


def degenerate_expectations(features: list[str], profile: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Checks every training snapshot gets, whatever its suite: no feature is constant, and no
    categorical feature's set of values collapses against the champion's training data."""
    categorical = (profile or {}).get("categorical", {})
    spec = []
    for column in features:
        floor = 2
        if column in categorical:
            floor = max(2, math.ceil(MIN_CARDINALITY_SHARE * len(categorical[column]["frequencies"])))
        spec.append(
            {
                "type": "expect_column_unique_value_count_to_be_between",
                "kwargs": {"column": column, "min_value": floor},
            }
        )
    return spec
