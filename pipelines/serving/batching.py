"""The micro-batching engine: concurrent requests scored together in one model call.

Adaptive micro-batching: the loop waits, at most ``max_wait_ms``, only while more
requests are in flight; the model call runs in one worker thread so the event loop
keeps accepting requests. A job's answer leaves only once its rows are logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.serving.config import ServingSettings
from pipelines.serving.metrics import ServerMetrics
from pipelines.serving.model import LoadedModel
from pipelines.serving.registry import RegistryWatcher
from pipelines.serving.schema import Batch

log = logging.getLogger("pipelines.serving")


@dataclass
class Job:
    """One request's rows on their way through the batcher."""

    model: LoadedModel
    batch: Batch
    request_id: str
    route: str
    routing_key: str | None
    rollout_id: str | None
    started: float
    event_time: float | None = None  # ms since the epoch, when the client says when the event was
    future: asyncio.Future | None = None
    shadow: LoadedModel | None = None
    result: np.ndarray | None = field(default=None, repr=False)
    error: Exception | None = None  # this job's rows could not be logged: it gets a 503


class UnscorableInput(ValueError):
    """The model could not score this request's values (e.g. a finite number that overflows once
    scaled): the request's own problem, a 422; its neighbours in the micro-batch are answered."""


class Batcher:
    """The batching part of :class:`~pipelines.serving.server.Server` (a mixin: the state is the server's).

    It hands each scored micro-batch to ``_append`` (:mod:`pipelines.serving.log_handoff`) and
    the jobs to score in the shadow to ``_submit_shadow`` (:mod:`pipelines.serving.shadow`).
    """

    # set by Server.__init__ and Server.start
    config: ServingSettings
    metrics: ServerMetrics
    watcher: RegistryWatcher
    inflight: int
    queue: asyncio.Queue[Job] | None
    executor: ThreadPoolExecutor
    log: Any  # the prediction log (None in a sandbox)
    # the other mixins' methods (pipelines.serving.log_handoff, pipelines.serving.shadow)
    _append: Callable[[list[Job]], list[Job]]
    _submit_shadow: Callable[[list[Job]], None]

    # -- batching --------------------------------------------------------------------------------
    async def submit(self, job: Job) -> np.ndarray:
        """The job's probabilities, once scored and logged; TimeoutError past the request deadline.

        A job past its deadline still runs to the end (its rows may reach the log), but its client
        was told it failed: the log may hold a prediction nobody got, never the other way round."""
        job.future = asyncio.get_running_loop().create_future()
        assert self.queue is not None, "the server is not started"
        self.queue.put_nowait(job)
        return await asyncio.wait_for(asyncio.shield(job.future), self.config.request_timeout_seconds)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait, max_rows = self.config.max_wait_ms / 1000, self.config.max_batch_rows
        assert self.queue is not None, "the server is not started"
        while True:
            job = await self.queue.get()
            jobs, rows = [job], len(job.batch)
            deadline = loop.time() + max_wait
            while rows < max_rows:
                try:
                    nxt = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if self.inflight <= len(jobs) or remaining <= 0:
                        break  # nobody else is coming: do not make this request wait
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), remaining)
                    except TimeoutError:
                        break
                jobs.append(nxt)
                rows += len(nxt.batch)
            try:
                await loop.run_in_executor(self.executor, self._score_and_log, jobs)
            except Exception as exc:
                for j in jobs:
                    assert j.future is not None  # set by submit before the job is queued
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j in jobs:
                assert j.future is not None
                if not j.future.done():
                    if j.error is not None:
                        j.future.set_exception(j.error)
                    else:
                        j.future.set_result(j.result)
            shadow = [j for j in jobs if j.shadow is not None and j.error is None]
            if shadow:
                self._submit_shadow(shadow)

    def _score(self, jobs: list[Job]) -> None:
        """One model call per model in the micro-batch; each job gets its slice of the answer."""
        groups: dict[int, list[Job]] = {}
        for j in jobs:
            groups.setdefault(id(j.model), []).append(j)
        for group in groups.values():
            model = group[0].model
            try:
                proba = model.predict_proba(Batch.concat([j.batch for j in group]))
            except Exception as exc:  # one request's values can break the call: score each alone
                if len(group) == 1:
                    group[0].error = UnscorableInput(str(exc))
                    continue
                log.warning(
                    "scoring a micro-batch of %d failed (%s); scoring each request alone", len(group), exc
                )
                for j in group:
                    try:
                        j.result = model.predict_proba(j.batch)
                    except Exception as alone:
                        j.error = UnscorableInput(str(alone))
                continue
            self.metrics.batch_rows.observe(len(proba))
            offset = 0
            for j in group:
                j.result = proba[offset : offset + len(j.batch)]
                offset += len(j.batch)

    def _score_and_log(self, jobs: list[Job]) -> None:
        """Score, log durably, count: runs in the model thread. The answer leaves only after this."""
        self._score(jobs)
        jobs = [j for j in jobs if j.error is None]  # unscorable ones get their 422, nothing logged
        if not jobs:
            return
        if self.log:
            jobs = self._append(jobs)
        m = self.metrics
        deployment = self.watcher.deployment
        for j in jobs:
            m.predictions.labels(j.model.version, j.route).inc(len(j.batch))
            m.latency.labels(j.route).observe(time.perf_counter() - j.started)
            probability = m.probability.labels(j.route)
            assert j.result is not None  # a job without an error was scored
            for p in j.result.tolist():
                probability.observe(p)
        by_schema: dict[int, list[Job]] = {}
        for j in jobs:  # champion and challenger may (rarely) take different inputs
            by_schema.setdefault(id(j.model.schema), []).append(j)
        try:  # the answer is already logged: a metrics fault must never turn it into an error
            for group in by_schema.values():
                batch = Batch.concat([j.batch for j in group])
                m.observe_features(
                    group[0].model.schema, batch, deployment.known_categories, deployment.numeric_bounds
                )
        except Exception:
            log.exception("could not update the feature metrics")
