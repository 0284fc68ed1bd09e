"""Shadow scoring: the challenger scores the champion's requests off the answer path, and is logged."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from pipelines.serving.batching import Job
from pipelines.serving.config import ServingSettings
from pipelines.serving.metrics import ServerMetrics
from pipelines.serving.model import LoadedModel
from pipelines.serving.policy import SHADOW_ROUTE

log = logging.getLogger("pipelines.serving")


class ShadowScoring:
    """The shadow part of :class:`~pipelines.serving.server.Server` (a mixin: the state is the server's).

    Scores with ``_score`` (:mod:`pipelines.serving.batching`) and logs with ``_log_rows``
    (:mod:`pipelines.serving.log_handoff`), in a thread of its own, a bounded number at a time.
    """

    # set by Server.__init__
    config: ServingSettings
    metrics: ServerMetrics
    log: Any
    shadow_executor: ThreadPoolExecutor
    shadow_pending: int
    # the other mixins' methods (pipelines.serving.batching, pipelines.serving.log_handoff)
    _score: Callable[[list[Job]], None]
    _log_rows: Callable[[list[Job]], list[dict]]

    def _submit_shadow(self, jobs: list[Job]) -> None:
        if self.shadow_pending >= self.config.shadow_queue:
            self.metrics.shadow_dropped.inc()
            return
        self.shadow_pending += 1
        shadow_jobs = [
            Job(
                cast(LoadedModel, j.shadow),  # the batcher hands over only the jobs with a shadow model
                j.batch,
                j.request_id,
                SHADOW_ROUTE,
                j.routing_key,
                j.rollout_id,
                time.perf_counter(),
                event_time=j.event_time,
            )
            for j in jobs
        ]

        def run() -> None:
            try:
                self._score(shadow_jobs)
                scored = [j for j in shadow_jobs if j.error is None]  # one unscorable row drops alone
                if len(scored) < len(shadow_jobs):
                    self.metrics.errors.labels("shadow").inc(len(shadow_jobs) - len(scored))
                if self.log and scored:
                    self.log.append(self._log_rows(scored))
                probability = self.metrics.probability.labels(SHADOW_ROUTE)
                for j in scored:
                    self.metrics.predictions.labels(j.model.version, SHADOW_ROUTE).inc(len(j.batch))
                    assert j.result is not None  # a job without an error was scored
                    for p in j.result.tolist():
                        probability.observe(p)
            except Exception:  # the caller already has the champion's answer; count and move on
                self.metrics.errors.labels("shadow").inc()
                log.exception("shadow scoring failed")
            finally:
                self.shadow_pending -= 1

        self.shadow_executor.submit(run)
