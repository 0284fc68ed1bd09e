"""The pipelines as data: which steps, in which order, each fed by which upstream results.

This module is the ``create_pipeline`` of the project: DAG files and the plain
runner both read it, so the graph is written once. It imports nothing heavy,
because the Airflow scheduler parses DAG files every few seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

# typing_extensions' TypedDict: the runner checks results with pydantic, which refuses typing's
# on Python < 3.12 (and total=False, not NotRequired, survives this module's string annotations)
from typing_extensions import TypedDict


class Status(StrEnum):
    """The ``status`` a step result may carry (a plain string in its JSON)."""

    SKIPPED = "skipped"  # the step decided not to act: orchestrators mark the task skipped
    WAITING = "waiting"  # a polled step has no answer yet: poll again
    DECIDED = "decided"  # a polled step has its answer
    PASSED = "passed"  # infra validation
    REGISTERED = "registered"
    MATERIALIZED = "materialized"


SKIPPED = Status.SKIPPED


class _Skip(TypedDict):
    status: Status  # always Status.SKIPPED
    reason: str


class Skipped(_Skip, total=False):
    """``skipped(reason, **details)``: the step decided not to act (details: these keys only)."""

    registered: bool  # register: False (the gate rejected)
    version: str | None  # start_rollout: already champion; validate_serving: None
    retrain: bool  # decide_retrain: False
    notify: bool  # decide_retrain: whether notify mode posted the reasons
    approval_required: bool  # runner: True, waiting for a person before an approval step


@dataclass(frozen=True)
class StepSpec:
    """A step, the upstream steps whose results it receives, and how an orchestrator runs it.

    ``polled``: run again until its result says ``status: decided`` (a sensor in Airflow, a loop
    in the plain runner). ``approval``: a person may have to approve before it runs (an Airflow
    HITL task; ``mlops run --approve`` in the plain runner), when config asks or an upstream
    result gives an ``approval_reason``.
    """

    name: str
    inputs: tuple[str, ...] = ()
    polled: bool = False
    approval: bool = False


TRAINING: tuple[StepSpec, ...] = (
    StepSpec("ingest"),
    StepSpec("validate", inputs=("ingest",)),
    StepSpec("train", inputs=("ingest", "validate")),
    StepSpec("evaluate", inputs=("ingest", "train")),
    StepSpec("register", inputs=("ingest", "train", "evaluate")),
)

# Deploy: the candidate must serve correctly in a sandbox before it takes any traffic; the
# rollout's verdict is awaited (polled) and then applied. An approval gate may sit before the rollout.
DEPLOY: tuple[StepSpec, ...] = (
    StepSpec("validate_serving"),
    StepSpec("start_rollout", inputs=("validate_serving",), approval=True),
    StepSpec("analyse_rollout", inputs=("start_rollout",), polled=True),
    StepSpec("conclude_rollout", inputs=("start_rollout", "analyse_rollout")),
)

ROLLBACK: tuple[StepSpec, ...] = (StepSpec("rollback"),)

BATCH_INFERENCE: tuple[StepSpec, ...] = (
    StepSpec("ingest_batch"),
    StepSpec("validate", inputs=("ingest_batch",)),
    StepSpec("score", inputs=("ingest_batch", "validate")),
)

# Monitoring: one window against the champion's training reference, then the retrain policy.
MONITORING: tuple[StepSpec, ...] = (
    StepSpec("detect_drift"),
    StepSpec("decide_retrain", inputs=("detect_drift",)),
)

# Feature store: offline tables up to the interval's end, then the online store for serving.
FEATURES: tuple[StepSpec, ...] = (StepSpec("materialize_features"),)

PIPELINES: dict[str, tuple[StepSpec, ...]] = {
    "training": TRAINING,
    "deploy": DEPLOY,
    "rollback": ROLLBACK,
    "batch_inference": BATCH_INFERENCE,
    "monitoring": MONITORING,
    "features": FEATURES,
}

# every step, in pipeline order: ``pipelines.steps`` imports ``pipelines.steps.<name>``
STEP_NAMES: tuple[str, ...] = tuple(dict.fromkeys(s.name for spec in PIPELINES.values() for s in spec))
# steps an orchestrator polls until their result says ``status: decided``
POLLED_STEPS = frozenset(s.name for spec in PIPELINES.values() for s in spec if s.polled)


def approval_reason(always: bool, inputs: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why a person must approve before an approval step: config asks, or an upstream result does."""
    for result in inputs.values():
        if (result or {}).get("approval_reason"):
            return str(result["approval_reason"])
    return "deploy.approval is on: every rollout is approved by a person" if always else None


def skipped(reason: str, **details: Any) -> Skipped:
    """The result of a step that decided not to act; orchestrators mark the task skipped."""
    return cast(Skipped, {"status": SKIPPED, "reason": reason, **details})


def is_skipped(result: Mapping[str, Any] | None) -> bool:
    """Whether a step result says the step decided not to act."""
    if not result:
        return False
    return result.get("status") == SKIPPED
