"""Materialize features: bring the offline tables up to the interval's end, load the online store.

The model server completes key-only requests from the online store, so this step keeps it
fresh: each run loads the values of its data interval (plus one TTL before it, so an entity
whose latest value is older still has one). Skipped when the dataset has no feature store.
"""

from __future__ import annotations

from datetime import timedelta
from typing import cast

from pipelines import feature_store
from pipelines.context import StepContext
from pipelines.pipeline import Status, skipped
from pipelines.results import MaterializeFeaturesResult, NoInputs, Skipped


def run(ctx: StepContext, inputs: NoInputs) -> MaterializeFeaturesResult | Skipped:
    """Build the offline tables up to ``interval_end`` and materialize ``[start - ttl, end)``."""
    dataset = ctx.config.dataset
    if dataset.feature_store is None:
        return skipped(f"dataset {dataset.name!r} declares no feature store")
    longest_ttl = max(v.ttl_hours for v in dataset.feature_store.views)
    start = ctx.interval_start - timedelta(hours=longest_ttl)
    ctx.check_window(start, ctx.interval_end)
    built = feature_store.build(ctx.settings, dataset, ctx.interval_end)
    loaded = feature_store.materialize(ctx.settings, dataset, start, ctx.interval_end)
    return cast(
        MaterializeFeaturesResult, {"status": Status.MATERIALIZED, "offline_rows": built["rows"], **loaded}
    )
