"""Validate: the snapshot against the expectation suite and the champion's reference profile.

On failure the step raises :class:`ValidationFailed` naming each failed
expectation and its columns, after storing the report (JSON and Data Docs) with
the run and in MLflow, so nothing downstream runs and the evidence is kept.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines import storage, suggest, tracking, validation
from pipelines.config import load_expectations
from pipelines.context import StepContext
from pipelines.errors import ValidationFailed
from pipelines.results import Skipped, ValidateInputs, ValidateResult

log = logging.getLogger(__name__)


def _reference_profile(ctx: StepContext) -> tuple[dict[str, Any] | None, str | None]:
    """The training profile of the current champion, if there is a champion that has one."""
    version = tracking.champion_version(ctx.settings, ctx.config.registry.model_name)
    uri = version.tags.get("reference_profile_uri") if version else None
    if not uri or not storage.exists(uri):
        return None, None
    return storage.read_json(uri), version.version


def run(ctx: StepContext, inputs: ValidateInputs) -> ValidateResult | Skipped:
    """Run the suite; raise with every failure named, or return the report's location."""
    import mlflow

    ingested = inputs.get("ingest") or inputs["ingest_batch"]
    snapshot = storage.read_parquet(ingested["snapshot_uri"])
    out_dir = ctx.artifact_dir("validate")
    inferred_uri = None
    if ctx.config.dataset.expectations is None:  # no suite yet: infer one, as TFX's SchemaGen does
        spec = suggest.suggest(snapshot, ctx.config.dataset)
        origin = f"the snapshot of run {ctx.run_id} ({len(snapshot)} rows)"
        inferred_uri = storage.write_text(
            storage.join(out_dir, "inferred.expectations.yaml"),
            suggest.render(spec, ctx.config.dataset, origin),
        )
        log.warning(
            "dataset %s names no expectation suite: validating with %d expectations inferred from this"
            " snapshot (%s). Review it and set dataset.expectations, or run `mlops suggest-expectations`",
            ctx.config.dataset.name, len(spec), inferred_uri,
        )  # fmt: skip
    else:
        spec = load_expectations(ctx.config)
    if ingested.get("labelled") is False:  # rows to score: the label does not exist yet
        spec = validation.without_columns(spec, {ctx.config.dataset.target.name})
    profile, reference_version = _reference_profile(ctx)
    if profile:
        spec = spec + validation.reference_expectations(profile, snapshot)
    if ingested.get("labelled") is not False:  # training data: a constant feature is broken data
        spec = spec + validation.degenerate_expectations(ctx.config.dataset.features.all, profile)
    docs_dir = storage.local_path(storage.join(out_dir, "data_docs")) or storage.join(
        ctx.settings.home.as_posix(), "tmp", "data_docs"
    )
    report = validation.validate_frame(snapshot, spec, ctx.config.dataset.name, docs_dir)
    report["reference_model_version"] = reference_version
    report_uri = storage.write_json(storage.join(out_dir, "validation.json"), report)

    failures = [r for r in report["results"] if not r["success"]]
    with tracking.pipeline_run(ctx, "validate"):
        stats = report["statistics"]
        mlflow.log_metrics(
            {
                "validation_expectations": stats["evaluated_expectations"],
                "validation_failed": stats["unsuccessful_expectations"],
            }
        )
        mlflow.set_tag("validation.passed", str(report["success"]).lower())
        mlflow.log_dict(report, "validation/validation.json")
        mlflow.log_artifacts(docs_dir, "validation/data_docs")
        if failures:  # raised inside the run, so MLflow marks it FAILED
            lines = [validation.describe_failure(f) for f in failures]
            message = (
                f"data validation failed: {len(failures)} of {stats['evaluated_expectations']} "
                f"expectations (report: {report_uri})\n  - " + "\n  - ".join(lines)
            )
            raise ValidationFailed(message, failures, report_uri)
    log.info(
        "validation passed: %d expectations%s",
        stats["evaluated_expectations"],
        f" (incl. reference profile of champion v{reference_version})" if reference_version else "",
    )
    result: ValidateResult = {
        "passed": True,
        "expectations": stats["evaluated_expectations"],
        "reference_model_version": reference_version,
        "report_uri": report_uri,
        "data_docs_uri": storage.join(out_dir, "data_docs", "index.html"),
    }
    if inferred_uri:
        result["inferred_suite_uri"] = inferred_uri
    return result
