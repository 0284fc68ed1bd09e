"""One module per step; each exposes ``run(ctx, inputs) -> result``.

A result is a small JSON document (URIs, versions, metrics, a decision). A step
that decides not to act returns ``pipelines.pipeline.skipped(reason)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from pipelines.errors import ConfigError
from pipelines.pipeline import STEP_NAMES

StepFn = Callable[..., dict[str, Any]]


def get_step(name: str) -> StepFn:
    """The ``run`` function of a step, imported on demand (steps pull in heavy libraries)."""
    if name not in STEP_NAMES:
        raise ConfigError(f"unknown step {name!r}; steps are: {', '.join(STEP_NAMES)}")
    return importlib.import_module(f"pipelines.steps.{name}").run
