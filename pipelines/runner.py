"""Run steps: one (the entrypoint every execution mode calls) or a whole pipeline in-process.

``run_pipeline`` is the orchestrator-free baseline: the same steps, the same
inputs, one Python process. The Airflow benchmark compares against it.
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from pipelines import audit, tracking
from pipelines.context import StepContext
from pipelines.errors import PipelineError
from pipelines.pipeline import PIPELINES, Status, StepSpec, approval_reason, is_skipped, skipped
from pipelines.results import RESULT_TYPES, Skipped
from pipelines.steps import get_step

log = logging.getLogger(__name__)
MAX_RESULT_BYTES = 64 * 1024  # results travel as XCom: keep them small, data goes to the store
# The step that opens each pipeline records who or what started the run (the audit trail).
OPENING_STEPS = {spec[0].name: pipeline for pipeline, spec in PIPELINES.items()}


def execute_step(name: str, ctx: StepContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run one step and check its result is a small JSON document."""
    started = time.perf_counter()
    step = get_step(name)
    # Every step talks to MLflow; bind its URIs first, so a fresh worker process (a scheduler's
    # task, a pod) never falls back to MLflow's default store for ``models:/`` and ``runs:/`` URIs.
    tracking.client(ctx.settings)
    if name in OPENING_STEPS:
        audit.record_step(
            ctx, audit.RUN_TRIGGERED, pipeline=OPENING_STEPS[name], dag_id=ctx.dag_id,
            interval_end=ctx.interval_end.isoformat(),
        )  # fmt: skip
    result = step(ctx, inputs)
    encoded = json.dumps(result, default=str)
    if len(encoded) > MAX_RESULT_BYTES:
        raise PipelineError(
            f"step {name} returned {len(encoded)} bytes; results must stay under {MAX_RESULT_BYTES}"
        )
    log.info("step %s finished in %.1fs", name, time.perf_counter() - started)
    decoded = json.loads(encoded)
    check_result(name, decoded)
    return decoded


@functools.cache
def _contract(name: str, skipped: bool) -> TypeAdapter:
    return TypeAdapter(Skipped if skipped else RESULT_TYPES[name])


def check_result(name: str, result: Any) -> None:
    """Refuse a result that breaks its step's contract (``pipelines/results.py``), naming the key."""
    try:
        _contract(name, is_skipped(result)).validate_python(result)
    except ValidationError as exc:
        raise PipelineError(
            f"step {name} returned a result its contract (pipelines.results) refuses: {exc}"
        ) from None


def run_pipeline(
    spec: tuple[StepSpec, ...],
    ctx: StepContext,
    *,
    echo: bool = False,
    approve: bool = False,
    poll_seconds: float | None = None,
    poll_timeout: float | None = None,
) -> dict[str, Mapping[str, Any]]:
    """Run every step in order in this process, as an orchestrator would; stop after a step that skips.

    A polled step runs again every ``poll_seconds`` (default: the rollout's ``poke_seconds``) until
    it decides, for at most ``poll_timeout`` seconds (default: the rollout's ``max_wait_hours``).
    Before an approval step that needs a person, the run stops with a skipped result naming why,
    unless ``approve`` says the person running it approves (recorded in the audit trail).
    """
    rollout = ctx.config.deploy.rollout
    poll_seconds = rollout.poke_seconds if poll_seconds is None else poll_seconds
    poll_timeout = rollout.max_wait_hours * 3600 if poll_timeout is None else poll_timeout
    results: dict[str, Mapping[str, Any]] = {}
    for i, step in enumerate(spec, 1):
        started = time.perf_counter()
        inputs = {n: results[n] for n in step.inputs}
        if step.approval and (reason := approval_reason(ctx.config.deploy.approval, inputs)):
            if not approve:
                results[step.name] = skipped(
                    f"waiting for a person: {reason}. Run again with --approve to approve as "
                    f"{getpass.getuser()}, or approve in the Airflow UI",
                    approval_required=True,
                )
                if echo:
                    print(f"[{i}/{len(spec)}] {step.name}: {results[step.name]['reason']}", flush=True)
                break
            _record_approval(ctx, step.name, inputs, reason)
        if echo:
            print(f"[{i}/{len(spec)}] {step.name} ...", flush=True)
        result = execute_step(step.name, ctx, inputs)
        while step.polled and result.get("status") == Status.WAITING:
            if time.perf_counter() - started > poll_timeout:
                raise PipelineError(f"step {step.name} did not decide within {poll_timeout:.0f} s")
            if echo:
                progress = {k: v for k, v in result.items() if k not in ("status", "reason")}
                print(f"[{i}/{len(spec)}] {step.name} waiting: {progress}", flush=True)
            time.sleep(poll_seconds)
            result = execute_step(step.name, ctx, inputs)
        results[step.name] = result
        if echo:
            print(f"[{i}/{len(spec)}] {step.name} done in {time.perf_counter() - started:.1f}s", flush=True)
        if is_skipped(result):
            break
    return results


def _record_approval(
    ctx: StepContext, step: str, inputs: Mapping[str, Mapping[str, Any]], reason: str
) -> None:
    """The person running ``mlops run --approve`` approved: the audit trail says who, and why it was asked."""
    validated = next(iter(inputs.values()), {}) or {}
    audit.record(
        ctx.settings, audit.APPROVED, model=validated.get("model_name") or ctx.config.registry.model_name,
        run_key=f"{ctx.dag_id}/{ctx.run_id}", version=validated.get("version"),
        by=getpass.getuser(), reason=reason, via=f"mlops run --approve (before {step})",
    )  # fmt: skip
