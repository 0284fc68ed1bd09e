"""Prometheus metrics of the model server.

Besides counts and latency, the server exports per-feature sums, counts and
missing/unseen counts, and the champion's training mean and spread for each
numeric feature, so an alert rule can watch drift without the server doing
statistics, e.g. ``abs(rate(sum)/rate(count) - reference_mean) / reference_std > 1``.
"""

from __future__ import annotations

import gc

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
PROBABILITY_BUCKETS = tuple(round(x, 1) for x in np.linspace(0.1, 1.0, 10))


# A running sum must stay finite for the replica's life: one 1e308 would make it inf (and every
# drift mean after it NaN). Values beyond this are counted apart instead.
EXTREME = 1e12


class ServerMetrics:
    """All metrics, on a registry of their own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Collections by generation, and how much of the heap the collector no longer walks
        # (pipelines.serving.stalls.freeze_heap): a falling frozen count means long pauses are back.
        GCCollector(registry=r)
        Gauge(
            "mlops_gc_frozen_objects", "Objects in the collector's permanent generation", registry=r
        ).set_function(gc.get_freeze_count)
        self.predictions = Counter("mlops_predictions", "Rows scored", ["model_version", "route"], registry=r)
        self.requests = Counter(
            "mlops_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "mlops_request_latency_seconds",
            "Time from request arrival to logged prediction",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("mlops_errors", "Errors by kind", ["kind"], registry=r)
        self.loop_lag = Histogram(
            "mlops_event_loop_lag_seconds",
            "How late the event loop woke from a 10 ms sleep (a stall every request waits out)",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "mlops_batch_rows",
            "Rows per model call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 256, 1024, 4096),
            registry=r,
        )
        self.probability = Histogram(
            "mlops_prediction_probability",
            "Predicted probability",
            ["route"],
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        # A gauge, for dashboards: features can be negative (December's dew point is), and a
        # counter refuses to go down. The drift rules use the two counters below instead: delta()
        # of a gauge cannot tell a restart (the sum back at 0) from a drift, increase() can.
        self.feature_sum = Gauge(
            "mlops_feature_value_sum", "Running sum of a numeric feature's values", ["feature"], registry=r
        )
        # Mean over a window: (increase(positive[w]) - increase(negative[w])) / increase(count[w]).
        self.feature_positive = Counter(
            "mlops_feature_value_positive_sum", "Sum of a feature's positive values", ["feature"], registry=r
        )
        self.feature_negative = Counter(
            "mlops_feature_value_negative_sum",
            "Sum of the magnitudes of a feature's negative values",
            ["feature"],
            registry=r,
        )
        self.feature_count = Counter(
            "mlops_feature_value_count", "Non-missing values of a feature", ["feature"], registry=r
        )
        self.feature_extreme = Counter(
            "mlops_feature_extreme_values",
            f"Values beyond +-{EXTREME:g}, kept out of the running sum (they would make it inf for good)",
            ["feature"],
            registry=r,
        )
        self.feature_clipped = Counter(
            "mlops_feature_clipped_values",
            "Values beyond 10 training standard deviations of the champion's mean, counted at that bound",
            ["feature"],
            registry=r,
        )
        self.feature_missing = Counter(
            "mlops_feature_missing", "Missing values of a feature", ["feature"], registry=r
        )
        self.feature_unseen = Counter(
            "mlops_feature_unseen_category", "Categories not seen in training", ["feature"], registry=r
        )
        self.reference_mean = Gauge(
            "mlops_feature_reference_mean",
            "Training mean of a numeric feature (champion)",
            ["feature"],
            registry=r,
        )
        self.reference_std = Gauge(
            "mlops_feature_reference_std", "Training standard deviation (champion)", ["feature"], registry=r
        )
        self.model_info = Gauge(
            "mlops_model_info", "Loaded models (1 = serving)", ["role", "version", "runtime"], registry=r
        )
        self.ready = Gauge("mlops_ready", "1 when a champion is loaded", registry=r)
        self.policy_info = Gauge(
            "mlops_rollout_info", "Current strategy (1)", ["strategy", "challenger"], registry=r
        )
        self.registry_errors = Counter("mlops_registry_poll_errors", "Failed registry polls", registry=r)
        self.shadow_dropped = Counter(
            "mlops_shadow_dropped", "Shadow batches dropped because the shadow queue was full", registry=r
        )
        self._children: dict[str, tuple] = {}

    def _feature(self, name: str) -> tuple:
        """The per-feature counters, looked up once (``labels()`` costs more than ``inc()``)."""
        children = self._children.get(name)
        if children is None:
            children = self._children[name] = (
                self.feature_sum.labels(name),
                self.feature_count.labels(name),
                self.feature_missing.labels(name),
                self.feature_unseen.labels(name),
                self.feature_positive.labels(name),
                self.feature_negative.labels(name),
            )
        return children

    def observe_features(
        self,
        schema,
        batch,
        known_categories: dict[str, set[str]],
        bounds: dict[str, tuple[float, float]] | None = None,
    ) -> None:
        """Per-feature sums and counts for one micro-batch (vectorised, one increment per feature).

        ``bounds``: per numeric feature, the range a value counts within (the champion's training
        mean +- 10 std); a value beyond it counts at the bound, so that one request cannot move a
        window's mean by more than 10 std / the rows in the window (the alert needs 500).
        """
        numeric = batch.numeric
        present = ~np.isnan(numeric)
        extreme = present & ~(np.abs(np.where(present, numeric, 0.0)) <= EXTREME)
        summed = present & ~extreme
        kept = np.where(summed, numeric, 0.0)
        clipped = [0] * len(schema.numeric)
        for i, name in enumerate(schema.numeric):
            if bounds and name in bounds:
                low, high = bounds[name]
                column = kept[:, i]
                clipped[i] = int(np.count_nonzero(summed[:, i] & ((column < low) | (column > high))))
                if clipped[i]:
                    kept[:, i] = np.where(summed[:, i], np.clip(column, low, high), 0.0)
        sums = kept.sum(axis=0).tolist()
        positives = np.where(kept > 0, kept, 0.0).sum(axis=0).tolist()
        negatives = (-np.where(kept < 0, kept, 0.0)).sum(axis=0).tolist()
        counts = summed.sum(axis=0).tolist()
        extremes = extreme.sum(axis=0).tolist()
        n = numeric.shape[0]
        for i, name in enumerate(schema.numeric):
            total, count, missing, _, positive, negative = self._feature(name)
            total.inc(sums[i])
            positive.inc(positives[i])
            negative.inc(negatives[i])
            count.inc(counts[i])
            if extremes[i]:
                self.feature_extreme.labels(name).inc(extremes[i])
            if clipped[i]:
                self.feature_clipped.labels(name).inc(clipped[i])
            absent = n - counts[i] - extremes[i]
            if absent:
                missing.inc(absent)
        for i, name in enumerate(schema.categorical):
            _, count, missing_counter, unseen_counter, _, _ = self._feature(name)
            values = batch.categorical[i]
            missing = values.count(None)
            count.inc(n - missing)
            if missing:
                missing_counter.inc(missing)
            known = known_categories.get(name)
            if known:
                unseen = sum(v is not None and v not in known for v in values)
                if unseen:
                    unseen_counter.inc(unseen)

    def show_deployment(self, deployment) -> None:
        """Reset the info gauges to the models and policy now serving."""
        self.model_info.clear()
        self.policy_info.clear()
        champion, challenger = deployment.champion, deployment.challenger
        self.ready.set(1 if champion else 0)
        if champion:
            self.model_info.labels("champion", champion.version, champion.runtime).set(1)
            for name, stats in (champion.reference.get("numeric") or {}).items():
                if stats.get("mean") is not None:
                    self.reference_mean.labels(name).set(stats["mean"])
                    self.reference_std.labels(name).set(stats.get("std") or 0.0)
        if challenger:
            self.model_info.labels("challenger", challenger.version, challenger.runtime).set(1)
        self.policy_info.labels(deployment.policy.strategy, deployment.policy.challenger_version or "").set(1)
