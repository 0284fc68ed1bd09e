"""Run steps: one (the entrypoint every execution mode calls) or a whole pipeline in-process.

``run_pipeline`` is the orchestrator-free baseline: the same steps, the same
inputs, one Python process. The Airflow benchmark compares against it.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pipelines import audit, tracking
from pipelines.context import StepContext
from pipelines.errors import PipelineError
from pipelines.pipeline import PIPELINES, StepSpec, is_skipped
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
    return json.loads(encoded)


def run_pipeline(
    spec: tuple[StepSpec, ...], ctx: StepContext, *, echo: bool = False
) -> dict[str, dict[str, Any]]:
    """Run every step in order in this process; stop after a step that skips."""
    results: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(spec, 1):
        started = time.perf_counter()
        if echo:
            print(f"[{i}/{len(spec)}] {step.name} ...", flush=True)
        results[step.name] = execute_step(step.name, ctx, {n: results[n] for n in step.inputs})
        if echo:
            print(f"[{i}/{len(spec)}] {step.name} done in {time.perf_counter() - started:.1f}s", flush=True)
        if is_skipped(results[step.name]):
            break
    return results
