"""The model server's request handling: the state shared by the endpoints, and the endpoints.

The request path is lean on purpose: the body is parsed with orjson and checked against
the model's signature by hand, then scored in a micro-batch (:mod:`pipelines.serving.batching`)
and logged before the answer is sent (:mod:`pipelines.serving.log_handoff`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from pipelines import privacy
from pipelines.prediction_log import open_log
from pipelines.serving import security
from pipelines.serving.batching import Batcher, Job, UnscorableInput
from pipelines.serving.config import ServingSettings
from pipelines.serving.log_handoff import PredictionLogHandoff
from pipelines.serving.metrics import ServerMetrics
from pipelines.serving.payload import _feedback_payload, _predict_payload
from pipelines.serving.policy import CHALLENGER_ROUTE, CHAMPION_ROUTE, route
from pipelines.serving.registry import Deployment, RegistryWatcher
from pipelines.serving.responses import ORJSONResponse, _Reject, problem
from pipelines.serving.schema import Batch, InvalidInput, parse_records
from pipelines.serving.shadow import ShadowScoring
from pipelines.serving.stalls import freeze_heap, watch_loop_lag
from pipelines.serving.v2_endpoints import InferenceProtocol

if TYPE_CHECKING:
    from pipelines.feature_store import OnlineFeatures

log = logging.getLogger("pipelines.serving")


def _rest_payload(body: bytes) -> tuple:
    """``/predict``'s body: records, routing key, event time (and nothing protocol-specific)."""
    return (*_predict_payload(body), None)


@dataclass
class Budget:
    """What the whole process holds, shared by every model a catalogue server serves: the caps
    (``MLOPS_SERVING_MAX_PENDING``, ``_MAX_BUFFERED_BYTES``, ``_PARSE_SLOTS``) bound the process's
    memory, not each model's (ten models held ten times the bodies under one pod's limit)."""

    parse_slots: asyncio.Semaphore  # large bodies parsed at once
    pending: int = 0
    buffered: int = 0

    @classmethod
    def of(cls, config: ServingSettings) -> Budget:
        """An empty budget with the parse slots ``config`` allows."""
        return cls(asyncio.Semaphore(config.parse_slots))


class Server(Batcher, PredictionLogHandoff, ShadowScoring, InferenceProtocol):
    """State shared by the endpoints: deployment watcher, batcher, prediction log, metrics."""

    def __init__(self, config: ServingSettings, budget: Budget | None = None):
        self.config = config
        self.budget = budget or Budget.of(config)
        self.metrics = ServerMetrics()
        self.log = (
            open_log(config.settings, config.model_name, fsync=config.fsync)
            if config.log_predictions
            else None
        )
        self.watcher = RegistryWatcher(
            config.settings,
            config.model_name,
            cache=config.model_cache,
            poll_seconds=config.poll_seconds,
            pinned_version=config.pinned_version,
            model_dir=config.model_dir,
            threshold=config.threshold,
            on_change=self._deployment_changed,
            pii_fingerprint=config.pii_fingerprint,
        )
        self.online: OnlineFeatures | None = None  # the feature store's online features, opened on first use
        # Why the prediction log cannot be written (a database or disk outage), until it can again:
        # /ready fails meanwhile, so traffic goes to replicas that can acknowledge predictions.
        self.log_outage: str | None = None
        self.inflight = 0  # this model's requests in flight (the batcher waits only while there are more)
        self._next_ping = 0.0
        self.queue: asyncio.Queue[Job] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.shadow_executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.shadow_pending = 0
        self._batcher: asyncio.Task | None = None
        self._lag_watch: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        freeze_heap()  # what start-up imported (MLflow, pandas, scikit-learn) is never walked again
        self.queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        self._lag_watch = asyncio.create_task(watch_loop_lag(self.metrics.loop_lag.observe))
        self.watcher.start(on_error=lambda exc: self.metrics.registry_errors.inc())

    async def stop(self) -> None:
        self.watcher.stop()
        for task in (self._batcher, self._lag_watch):
            if task:
                task.cancel()
        self.executor.shutdown(wait=True)
        self.shadow_executor.shutdown(wait=True)
        if self.log:
            self.log.close()

    def _deployment_changed(self, deployment: Deployment) -> None:
        """After a swap (in the registry watcher's thread): show it, and freeze the new model."""
        self.metrics.show_deployment(deployment)
        freeze_heap()

    # -- endpoints -------------------------------------------------------------------------------
    async def predict(self, request: Request, model_name: str | None = None) -> Response:
        """``POST /predict`` (and ``/models/<name>/predict``): JSON records in, predictions out."""
        if (missing := self._unknown_model(model_name)) is not None:
            return missing
        return await self._bounded(request, self._predict, _rest_payload, self._rest_answer)

    def _unknown_model(self, model_name: str | None) -> Response | None:
        if model_name is None or model_name == self.config.model_name:
            return None
        return problem(404, f"no model {model_name!r} here; this server serves {self.config.model_name!r}")

    async def _bounded(self, request: Request, handler, *args) -> Response:
        if self.budget.pending >= self.config.max_pending:  # before the body is read: memory stays bounded
            self.metrics.requests.labels("predict", "503").inc()
            return self._busy()
        self.inflight += 1
        self.budget.pending += 1
        try:
            return await handler(request, *args)
        finally:
            self.inflight -= 1
            self.budget.pending -= 1
            self.release_body(request)

    def _complete(self, records: list[Any], schema: Any) -> list[dict[str, Any]]:
        """Fill features a record lacks from the online store; drop the keys the model does not take.

        Returns the lookups that found nothing for features the model requires (a 422).
        """
        from pipelines.feature_store import OnlineFeatures

        if self.online is None:
            self.online = OnlineFeatures(self.config.settings, self.config.store_dataset)
        misses = self.online.enrich(records)
        required = set(schema.columns) - set(schema.optional)
        unknown = [
            {"loc": ["records", m["row"]], "msg": f"{m['view']} has no values for {m['keys']}", **m}
            for m in misses
            if required & set(m["features"])
        ]
        model_inputs = set(schema.columns)
        for record in records:
            if isinstance(record, dict):
                for key in self.config.request_keys:
                    if key not in model_inputs:
                        record.pop(key, None)
        return unknown

    async def _read_body(self, request: Request) -> bytes:
        """The body, counted while it streams in: a chunked upload stops at the limit too.

        Within ``body_timeout_seconds`` (a client trickling bytes holds a slot no longer: 408), and
        while all bodies held stay under ``max_buffered_bytes`` (503); ``release_body`` gives the
        bytes back when the request is done."""
        config = self.config
        limit = config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _Reject(413, f"body is {declared} bytes; the limit is {limit}")
        body = bytearray()
        request.state.buffered = 0
        try:
            async with asyncio.timeout(config.body_timeout_seconds):
                async for chunk in request.stream():
                    if self.budget.buffered + len(chunk) > config.max_buffered_bytes:
                        raise _Reject(503, "the server holds too many request bodies: retry shortly")
                    self.budget.buffered += len(chunk)
                    request.state.buffered += len(chunk)
                    body += chunk
                    if len(body) > limit:
                        raise _Reject(413, f"body is over the limit of {limit} bytes")
        except TimeoutError:
            raise _Reject(408, f"the body did not arrive within {config.body_timeout_seconds:g} s") from None
        if not body:
            raise _Reject(400, "empty body: send a JSON object")
        return bytes(body)

    def release_body(self, request: Request) -> None:
        self.budget.buffered -= getattr(request.state, "buffered", 0)
        request.state.buffered = 0

    async def _off_loop(self, body: bytes, work, *args):
        """``work(*args)`` here for a small body, in a worker thread for a large one (the loop keeps
        answering /health while 10k rows are parsed)."""
        if len(body) < self.config.parse_in_thread_bytes:
            return work(*args)
        return await run_in_threadpool(work, *args)

    async def _prepare(self, request: Request, body: bytes, parse, version: str | None) -> Response | tuple:
        """Parse, check and route one request's body: an error response, or what the job needs."""
        try:
            records, routing_key, event_time, parsed = await self._off_loop(body, parse, body)
            if event_time is not None and not security.may(request.scope, security.FEEDBACK):
                raise _Reject(403, "event_time replays history: it needs the feedback token")
        except _Reject as rej:
            self.metrics.requests.labels("predict", str(rej.status)).inc()
            self.metrics.errors.labels("bad_request").inc()
            return rej.response()
        deployment: Deployment = self.watcher.deployment
        if deployment.champion is None:
            self.metrics.requests.labels("predict", "503").inc()
            return problem(503, f"no model loaded yet: {self.watcher.last_error or 'loading'}")
        chosen = route(deployment.policy, routing_key, salt=self.config.secret)
        model = deployment.champion
        if version is not None:  # a client that names the version gets that one, or a 404
            served = deployment.routes()
            if (unserved := self._unserved(served, version)) is not None:
                self.metrics.requests.labels("predict", "404").inc()
                return unserved
            model, chosen = next((m, r) for m, r in served if m.version == version)
        elif chosen == CHALLENGER_ROUTE and deployment.challenger is not None:
            model = deployment.challenger
        else:
            chosen = CHAMPION_ROUTE
        if isinstance(records, list) and len(records) > self.config.max_rows:  # before any lookup
            self.metrics.requests.labels("predict", "422").inc()
            self.metrics.errors.labels("invalid_input").inc()
            return problem(422, f"{len(records)} records; the limit is {self.config.max_rows} per request")
        if self.config.store_dataset is not None and isinstance(records, list):
            try:
                unknown = await run_in_threadpool(self._complete, records, model.schema)
            except Exception:  # the store is down: say so, never guess the features
                log.exception("online feature lookup failed")
                self.metrics.requests.labels("predict", "503").inc()
                return problem(503, "the feature store cannot complete the request: retry shortly")
            if unknown:
                self.metrics.requests.labels("predict", "422").inc()
                self.metrics.errors.labels("invalid_input").inc()
                return problem(422, "the feature store has no values for these keys", unknown[:50])
        try:
            batch = await self._off_loop(body, self._parse, records, model.schema)
        except InvalidInput as exc:
            self.metrics.requests.labels("predict", "422").inc()
            self.metrics.errors.labels("invalid_input").inc()
            return problem(422, f"invalid input: {exc}", exc.errors)
        return deployment, model, chosen, batch, routing_key, event_time, parsed

    async def _predict(self, request: Request, parse, answer, version: str | None = None) -> Response:
        try:
            body = await self._read_body(request)
        except _Reject as rej:
            self.metrics.requests.labels("predict", str(rej.status)).inc()
            self.metrics.errors.labels("bad_request").inc()
            return rej.response()
        # A large body becomes ~10x its size in Python objects while it is parsed and checked:
        # only `parse_slots` of them at once, until the rows are compact arrays.
        big = len(body) >= self.config.parse_in_thread_bytes
        async with self.budget.parse_slots if big else contextlib.nullcontext():
            prepared = await self._prepare(request, body, parse, version)
        if isinstance(prepared, Response):
            return prepared
        deployment, model, chosen, batch, routing_key, event_time, parsed = prepared
        shadow = deployment.challenger
        if deployment.policy.strategy != "shadow" or model is shadow:
            shadow = None
        job = Job(
            model=model,
            batch=batch,
            request_id=security.issue_request_id(self.config.secret),
            route=chosen,
            routing_key=routing_key,
            rollout_id=deployment.policy.rollout_id,
            started=time.perf_counter(),
            event_time=event_time,
            shadow=shadow,
        )
        try:
            proba = await self.submit(job)
        except UnscorableInput as exc:
            self.metrics.requests.labels("predict", "422").inc()
            self.metrics.errors.labels("invalid_input").inc()
            log.warning("request %s could not be scored: %s", job.request_id, exc)
            return problem(422, "the model cannot score these values (are they within a plausible range?)")
        except TimeoutError:
            self.metrics.requests.labels("predict", "503").inc()
            self.metrics.errors.labels("timeout").inc()
            log.error(
                "request %s: not scored and logged within %g s",
                job.request_id,
                self.config.request_timeout_seconds,
            )
            deadline = self.config.request_timeout_seconds
            return problem(
                503, f"the prediction did not finish within {deadline:g} s: retry (request {job.request_id})"
            )
        except Exception:  # the cause goes to the server's log only: it may name hosts or other rows
            self.metrics.requests.labels("predict", "503").inc()
            self.metrics.errors.labels("scoring").inc()
            log.exception("request %s: scoring or logging failed", job.request_id)
            message = "the prediction could not be logged, so it is not answered: retry"
            return problem(503, f"{message} (request {job.request_id})")
        self.metrics.requests.labels("predict", "200").inc()
        return answer(job, model, proba, parsed)

    @staticmethod
    def _rest_answer(job: Job, model: Any, proba: Any, parsed: Any) -> Response:
        threshold = model.threshold
        return ORJSONResponse(
            {
                "request_id": job.request_id,
                "model_name": model.name,
                "model_version": model.version,
                "route": job.route,
                "threshold": threshold,
                "predictions": [
                    {"prediction": int(p >= threshold), "probability": p} for p in proba.tolist()
                ],
            }
        )

    def _parse(self, records: Any, schema: Any) -> Batch:
        privacy.mask_records(records, self.config.personal)  # the raw value goes no further
        return parse_records(records, schema, max_rows=self.config.max_rows)

    async def feedback(self, request: Request, model_name: str | None = None) -> Response:
        """``POST /feedback`` (and ``/models/<name>/feedback``): labels for issued request ids."""
        if (missing := self._unknown_model(model_name)) is not None:
            return missing
        if self.budget.pending >= self.config.max_pending:  # the same bounds as /predict
            self.metrics.requests.labels("feedback", "503").inc()
            return self._busy()
        self.budget.pending += 1
        try:
            return await self._feedback(request)
        finally:
            self.budget.pending -= 1
            self.release_body(request)

    def _busy(self) -> Response:
        response = problem(503, f"the server holds {self.budget.pending} requests already: retry shortly")
        response.headers["retry-after"] = "1"
        return response

    async def _feedback(self, request: Request) -> Response:
        try:
            body = await self._read_body(request)
            big = len(body) >= self.config.parse_in_thread_bytes
            async with self.budget.parse_slots if big else contextlib.nullcontext():
                items = await self._off_loop(body, _feedback_payload, body, self.config.secret)
        except _Reject as rej:
            self.metrics.requests.labels("feedback", str(rej.status)).inc()
            return rej.response()
        if self.log is None:
            return problem(409, "this server does not log predictions (sandbox): feedback is not stored")
        try:
            recorded = await run_in_threadpool(self.log.append_feedback, items)
        except Exception:
            log.exception("storing %d feedback items failed", len(items))
            self.metrics.requests.labels("feedback", "503").inc()
            return problem(503, "the feedback could not be stored: retry")
        self.metrics.requests.labels("feedback", "200").inc()
        return ORJSONResponse({"recorded": recorded})

    async def ready(self, request: Request) -> Response:
        d = self.watcher.deployment
        # after an outage, ping the log again, at most every 2 s whoever asks (the probe is open)
        if self.log_outage and self.log is not None and time.monotonic() >= self._next_ping:
            self._next_ping = time.monotonic() + 2.0
            await run_in_threadpool(self._log_recovered)
        ready = d.champion is not None and self.log_outage is None
        status = 200 if ready else 503
        if not security.may(request.scope, security.ADMIN):  # a probe learns only whether to route here
            return ORJSONResponse({"ready": ready}, status_code=status)
        body = {
            "ready": ready,
            "model_name": self.config.model_name,
            "champion": d.champion and {"version": d.champion.version, "runtime": d.champion.runtime},
            "challenger": d.challenger and {"version": d.challenger.version, "runtime": d.challenger.runtime},
            "strategy": d.policy.strategy,
            "share": d.policy.share,
            "rollout_id": d.policy.rollout_id,
            "registry_error": self.watcher.last_error,
            "prediction_log_error": self.log_outage,
        }
        return ORJSONResponse(body, status_code=status)
