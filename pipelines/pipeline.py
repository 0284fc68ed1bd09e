"""The pipelines as data: which steps, in which order, each fed by which upstream results.

This module is the ``create_pipeline`` of the project: DAG files and the plain
runner both read it, so the graph is written once. It imports nothing heavy,
because the Airflow scheduler parses DAG files every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass


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

PIPELINES: dict[str, tuple[StepSpec, ...]] = {"training": TRAINING}
