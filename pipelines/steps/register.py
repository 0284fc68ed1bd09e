"""Register: only a candidate that passed the gate becomes a registry version.

The new version gets the alias ``challenger`` (and ``champion`` when there is no
champion yet and ``deploy.approval`` is off) and lineage tags. Idempotent: the
version is keyed by the MLflow run of this pipeline run, so a retried task or a
re-run of the same DAG run finds the version it made before instead of creating
a second one.
"""

from __future__ import annotations

import logging

from pipelines import audit, model_card, model_format, privacy, storage, tracking
from pipelines.context import StepContext
from pipelines.pipeline import Status, skipped
from pipelines.results import RegisterInputs, RegisterResult, Skipped

log = logging.getLogger(__name__)


def lineage_tags(ctx: StepContext, inputs: RegisterInputs) -> dict[str, str]:
    """Where the version came from: data, code, run, metrics and the gate's decision."""
    ingest, trained, evaluation = inputs["ingest"], inputs["train"], inputs["evaluate"]
    tags = {
        "data_hash": ingest["data_hash"],
        "data.window_start": ingest["window"]["start"],
        "data.window_end": ingest["window"]["end"],
        "data.rows": str(ingest["rows"]),
        "mlflow_run_id": trained["mlflow_run_id"],
        "airflow.dag_id": ctx.dag_id,
        "airflow.run_id": ctx.run_id,
        tracking.RUN_KEY_TAG: ctx.run_key,
        "code_version": tracking.code_version(),
        "estimator": trained["estimator"],
        "threshold": f"{trained['threshold']:.6f}",
        "gate.passed": str(evaluation["passed"]).lower(),
        "gate.reason": evaluation["reason"][:500],
        "evaluation_uri": evaluation["evaluation_uri"],
        "reference_profile_uri": trained["reference_profile_uri"],
        "reference_uri": trained["reference_uri"],
        "training.mode": trained["training_mode"]["mode"],
    }
    if trained.get("monitoring_profile_uri"):  # importances and calibration for monitoring
        tags["monitoring_profile_uri"] = trained["monitoring_profile_uri"]
    if trained.get("model_sha256"):  # the loaders refuse other files under this version
        tags[model_format.DIGEST_TAG] = trained["model_sha256"]
    tags.update({f"test.{k}": f"{v:.6f}" for k, v in evaluation["metrics"].items() if v is not None})
    if privacy.kept_columns(ctx.config.dataset):  # its features are pseudonyms made with this key
        tags[privacy.FINGERPRINT_TAG] = privacy.key_fingerprint()
    if evaluation["approval_required"] and evaluation["approval_reason"]:  # a wide swing: a person decides
        tags["approval.reason"] = evaluation["approval_reason"][:500]
    return tags


def _existing_version(client, name: str, run_id: str, model_uri: str):
    """The version this run already made of this very model (a retry), if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # no registered model yet
            return None
        raise
    # A re-run of train in the same DAG run logs a new model: that one needs its own version.
    same = [v for v in found if v.source == model_uri]
    return max(same, key=lambda v: int(v.version)) if same else None


def run(ctx: StepContext, inputs: RegisterInputs) -> RegisterResult | Skipped:
    """Create (or find) the model version, set aliases and lineage tags."""
    evaluation, trained = inputs["evaluate"], inputs["train"]
    name = ctx.config.registry.model_name
    if not evaluation["passed"]:
        log.info("not registering: the gate rejected the candidate (%s)", evaluation["reason"])
        return skipped(f"gate rejected: {evaluation['reason']}", registered=False)

    client = tracking.client(ctx.settings)
    tags = lineage_tags(ctx, inputs)
    version = _existing_version(client, name, trained["mlflow_run_id"], trained["model_uri"])
    created = version is None
    if created:
        version = tracking.register_version(
            ctx.settings, name, trained["model_uri"], trained["mlflow_run_id"], tags
        )
    else:
        log.info("version %s already registered by this run: reusing it", version.version)
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)

    aliases = [tracking.CHALLENGER]
    champion = tracking.champion_version(ctx.settings, name)
    # The first version serves at once, unless a person approves every rollout (deploy.approval):
    # then it goes live only when the deploy DAG's approval says so.
    first = champion is None and not ctx.config.deploy.approval
    if first or (champion is not None and str(champion.version) == str(version.version)):
        aliases.append(tracking.CHAMPION)
    for alias in aliases:
        client.set_registered_model_alias(name, alias, version.version)
    client.set_registered_model_tag(name, "dataset", ctx.config.dataset.name)
    card = model_card.build(
        config=ctx.config, model_name=name, version=str(version.version), ingest=inputs["ingest"],
        train=trained, evaluation=storage.read_json(evaluation["evaluation_uri"]),
        registered_at=version.creation_timestamp,  # a retry rebuilds the very same card
    )  # fmt: skip
    card_uris = model_card.publish(
        client, model_name=name, version=str(version.version), run_id=trained["mlflow_run_id"], card=card
    )
    audit.record_step(
        ctx, audit.VERSION_REGISTERED, key=str(version.version), version=str(version.version),
        aliases=aliases, decision="registered", reason=evaluation["reason"],
        approval_reason=evaluation.get("approval_reason"), data_hash=inputs["ingest"]["data_hash"],
    )  # fmt: skip
    log.info("registered %s version %s with aliases %s", name, version.version, aliases)
    return {
        "status": Status.REGISTERED,
        "registered": True,
        "created": created,
        "model_name": name,
        "version": str(version.version),
        "aliases": aliases,
        "model_uri": f"models:/{name}/{version.version}",
        "model_card": card_uris,
        "approval_reason": evaluation.get("approval_reason"),
    }
