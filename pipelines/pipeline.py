"""The pipelines as data: which steps, in which order, each fed by which upstream results.

This module is the ``create_pipeline`` of the project: DAG files and the plain
runner both read it, so the graph is written once. It imports nothing heavy,
because the Airflow scheduler parses DAG files every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SKIPPED = "skipped"


@dataclass(frozen=True)
class StepSpec:
    """A step and the upstream steps whose results it receives as inputs."""

    name: str
    inputs: tuple[str, ...] = ()


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
    StepSpec("start_rollout", inputs=("validate_serving",)),
    StepSpec("analyse_rollout", inputs=("start_rollout",)),
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

# Steps an orchestrator polls until their result says ``status: decided`` (a sensor in Airflow).
POLLED_STEPS = frozenset({"analyse_rollout"})

PIPELINES: dict[str, tuple[StepSpec, ...]] = {
    "training": TRAINING,
    "deploy": DEPLOY,
    "rollback": ROLLBACK,
    "batch_inference": BATCH_INFERENCE,
    "monitoring": MONITORING,
    "features": FEATURES,
}


def skipped(reason: str, **details: Any) -> dict[str, Any]:
    """The result of a step that decided not to act; orchestrators mark the task skipped."""
    return {"status": SKIPPED, "reason": reason, **details}


def is_skipped(result: dict[str, Any] | None) -> bool:
    return bool(result) and result.get("status") == SKIPPED
