"""The model server: FastAPI on uvicorn, micro-batched, every answer logged before it is sent.

Endpoints: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /ready``,
``GET /metrics``. With tokens configured, each endpoint needs the token of its scope
(``pipelines.serving.security``).

The request path is lean on purpose: the body is parsed with orjson and
checked against the model's signature by hand, concurrent requests are scored
together in one model call (adaptive micro-batching: it waits, at most
``max_wait_ms``, only while more requests are in flight), and the model call
runs in one worker thread so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from pipelines import privacy
from pipelines.prediction_log import open_log
from pipelines.serving import security
from pipelines.serving.config import ServingSettings
from pipelines.serving.metrics import ServerMetrics
from pipelines.serving.model import Batch, InvalidInput, LoadedModel, parse_records
from pipelines.serving.policy import CHALLENGER_ROUTE, CHAMPION_ROUTE, SHADOW_ROUTE, route
from pipelines.serving.registry import Deployment, RegistryWatcher

log = logging.getLogger("pipelines.serving")
# Text a client sends that lands in the prediction log: bounded, and no control character
# (PostgreSQL refuses NUL in text and JSON; the others have no business in a key or an id).
MAX_KEY_CHARS = 256
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# The log's `row` column is a 32-bit integer.
MAX_ROW = 2**31 - 1


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def problem(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> ORJSONResponse:
    body: dict[str, Any] = {"detail": message}
    if errors:
        body["errors"] = errors
    return ORJSONResponse(body, status_code=status)


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


class Server:
    """State shared by the endpoints: deployment watcher, batcher, prediction log, metrics."""

    def __init__(self, config: ServingSettings):
        self.config = config
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
            on_change=self.metrics.show_deployment,
            pii_fingerprint=config.pii_fingerprint,
        )
        self.online = None  # the feature store's online features, opened on first use
        # Why the prediction log cannot be written (a database or disk outage), until it can again:
        # /ready fails meanwhile, so traffic goes to replicas that can acknowledge predictions.
        self.log_outage: str | None = None
        self.inflight = 0
        self.buffered = 0  # bytes of request bodies held right now (max_buffered_bytes)
        self._next_ping = 0.0
        self.parse_slots = asyncio.Semaphore(config.parse_slots)
        self.queue: asyncio.Queue[Job] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model")
        self.shadow_executor = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self.shadow_pending = 0
        self._batcher: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._batcher = asyncio.create_task(self._batch_loop())
        self.watcher.start(on_error=lambda exc: self.metrics.registry_errors.inc())

    async def stop(self) -> None:
        self.watcher.stop()
        if self._batcher:
            self._batcher.cancel()
        self.executor.shutdown(wait=True)
        self.shadow_executor.shutdown(wait=True)
        if self.log:
            self.log.close()

    # -- batching --------------------------------------------------------------------------------
    async def submit(self, job: Job) -> np.ndarray:
        """The job's probabilities, once scored and logged; TimeoutError past the request deadline.

        A job past its deadline still runs to the end (its rows may reach the log), but its client
        was told it failed: the log may hold a prediction nobody got, never the other way round."""
        job.future = asyncio.get_running_loop().create_future()
        self.queue.put_nowait(job)
        return await asyncio.wait_for(asyncio.shield(job.future), self.config.request_timeout_seconds)

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait, max_rows = self.config.max_wait_ms / 1000, self.config.max_batch_rows
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
                    if not j.future.done():
                        j.future.set_exception(exc)
                continue
            for j in jobs:
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

    def _log_rows(self, jobs: list[Job]) -> list[dict]:
        now = time.time()
        rows = []
        for j in jobs:
            model = j.model
            latency_ms = (time.perf_counter() - j.started) * 1000
            for r, (record, p) in enumerate(
                zip(j.batch.records(model.schema), j.result.tolist(), strict=True)
            ):
                rows.append(
                    {
                        "request_id": j.request_id,
                        "row": r,
                        "ts": now * 1000,
                        "event_time": j.event_time,
                        "model_name": model.name,
                        "model_version": model.version,
                        "route": j.route,
                        "routing_key": j.routing_key,
                        "rollout_id": j.rollout_id,
                        "probability": p,
                        "prediction": int(p >= model.threshold),
                        "latency_ms": latency_ms,
                        "inputs": record,
                    }
                )
        return rows

    def _append(self, jobs: list[Job]) -> list[Job]:
        """Log the micro-batch; if that fails, each request alone, so one bad request fails alone.

        Returns the jobs that were logged; the others carry their error (and get a 503).
        """
        try:
            self.log.append(self._log_rows(jobs))
            self.log_outage = None
            return jobs
        except Exception as exc:
            self._note_outage(exc)
            if len(jobs) == 1 or self.log_outage:  # an outage fails everyone alike: no retry storm
                raise
            log.warning("logging a micro-batch of %d failed (%s); logging each request alone", len(jobs), exc)
        logged = []
        for j in jobs:
            try:
                self.log.append(self._log_rows([j]))
                logged.append(j)
            except Exception as exc:
                j.error = exc
                log.exception("request %s was not logged, so it is not answered", j.request_id)
        return logged

    def _note_outage(self, exc: Exception) -> None:
        """Remember an outage of the log (not a request the database refused)."""
        if _is_outage(exc):
            self.log_outage = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log.error("the prediction log cannot be written (%s): not ready until it can", self.log_outage)

    def _log_recovered(self) -> bool:
        """After an outage, whether the log answers again (runs in a worker thread)."""
        try:
            self.log.ping()
        except Exception as exc:
            self._note_outage(exc)
            return False
        log.warning("the prediction log answers again: ready")
        self.log_outage = None
        return True

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

    def _submit_shadow(self, jobs: list[Job]) -> None:
        if self.shadow_pending >= self.config.shadow_queue:
            self.metrics.shadow_dropped.inc()
            return
        self.shadow_pending += 1
        shadow_jobs = [
            Job(
                j.shadow,
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
                    for p in j.result.tolist():
                        probability.observe(p)
            except Exception:  # the caller already has the champion's answer; count and move on
                self.metrics.errors.labels("shadow").inc()
                log.exception("shadow scoring failed")
            finally:
                self.shadow_pending -= 1

        self.shadow_executor.submit(run)

    # -- endpoints -------------------------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        if self.inflight >= self.config.max_pending:  # before the body is read: memory stays bounded
            self.metrics.requests.labels("predict", "503").inc()
            response = problem(503, f"the server holds {self.inflight} requests already: retry shortly")
            response.headers["retry-after"] = "1"
            return response
        self.inflight += 1
        try:
            return await self._predict(request)
        finally:
            self.inflight -= 1
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
                    if self.buffered + len(chunk) > config.max_buffered_bytes:
                        raise _Reject(503, "the server holds too many request bodies: retry shortly")
                    self.buffered += len(chunk)
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
        self.buffered -= getattr(request.state, "buffered", 0)
        request.state.buffered = 0

    async def _off_loop(self, body: bytes, work, *args):
        """``work(*args)`` here for a small body, in a worker thread for a large one (the loop keeps
        answering /health while 10k rows are parsed)."""
        if len(body) < self.config.parse_in_thread_bytes:
            return work(*args)
        return await run_in_threadpool(work, *args)

    async def _prepare(self, request: Request, body: bytes) -> Response | tuple:
        """Parse, check and route one request's body: an error response, or what the job needs."""
        try:
            records, routing_key, event_time = await self._off_loop(body, _predict_payload, body)
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
        if chosen == CHALLENGER_ROUTE and deployment.challenger is not None:
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
        return deployment, model, chosen, batch, routing_key, event_time

    async def _predict(self, request: Request) -> Response:
        try:
            body = await self._read_body(request)
        except _Reject as rej:
            self.metrics.requests.labels("predict", str(rej.status)).inc()
            self.metrics.errors.labels("bad_request").inc()
            return rej.response()
        # A large body becomes ~10x its size in Python objects while it is parsed and checked:
        # only `parse_slots` of them at once, until the rows are compact arrays.
        big = len(body) >= self.config.parse_in_thread_bytes
        async with self.parse_slots if big else contextlib.nullcontext():
            prepared = await self._prepare(request, body)
        if isinstance(prepared, Response):
            return prepared
        deployment, model, chosen, batch, routing_key, event_time = prepared
        shadow = deployment.challenger if deployment.policy.strategy == "shadow" else None
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
        threshold = model.threshold
        return ORJSONResponse(
            {
                "request_id": job.request_id,
                "model_name": model.name,
                "model_version": model.version,
                "route": chosen,
                "threshold": threshold,
                "predictions": [
                    {"prediction": int(p >= threshold), "probability": p} for p in proba.tolist()
                ],
            }
        )

    def _parse(self, records: Any, schema: Any) -> Batch:
        privacy.mask_records(records, self.config.personal)  # the raw value goes no further
        return parse_records(records, schema, max_rows=self.config.max_rows)

    async def feedback(self, request: Request) -> Response:
        if self.inflight >= self.config.max_pending:  # the same bounds as /predict
            self.metrics.requests.labels("feedback", "503").inc()
            response = problem(503, f"the server holds {self.inflight} requests already: retry shortly")
            response.headers["retry-after"] = "1"
            return response
        self.inflight += 1
        try:
            return await self._feedback(request)
        finally:
            self.inflight -= 1
            self.release_body(request)

    async def _feedback(self, request: Request) -> Response:
        try:
            body = await self._read_body(request)
            big = len(body) >= self.config.parse_in_thread_bytes
            async with self.parse_slots if big else contextlib.nullcontext():
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


def _is_outage(exc: Exception) -> bool:
    """A failure of the log itself (connection, timeout, disk), not of one request's data."""
    if isinstance(exc, OSError):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"})


class UnscorableInput(ValueError):
    """The model could not score this request's values (e.g. a finite number that overflows once
    scaled): the request's own problem, a 422; its neighbours in the micro-batch are answered."""


class _Reject(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors

    def response(self) -> Response:
        answer = problem(self.status, self.message, self.errors)
        if self.status in (408, 413, 503):  # the rest of the body is not worth reading: drop it
            answer.headers["connection"] = "close"
        if self.status == 503:
            answer.headers["retry-after"] = "1"
        return answer


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _Reject(400, f"body is not valid JSON: {exc}") from None


def _text(value: str, what: str, limit: int = MAX_KEY_CHARS) -> str:
    """``value`` if it is short and free of control characters, else a 422 naming ``what``."""
    if len(value) > limit:
        raise _Reject(422, f"{what} is {len(value)} characters; the limit is {limit}")
    if CONTROL.search(value):
        raise _Reject(422, f"{what} must not contain control characters")
    return value


def _predict_payload(body: bytes) -> tuple[Any, str | None, float | None]:
    """``{"records": [...], "routing_key": "...", "event_time": "..."}``; ``dataframe_records``
    (MLflow's name) also works. ``event_time`` (ISO 8601 with offset, or epoch seconds) says when
    the scored events happened, for replays of history; monitoring can window on it."""
    payload = _json(body)
    if not isinstance(payload, dict):
        raise _Reject(422, 'body must be a JSON object like {"records": [{...}, ...]}')
    allowed = {"records", "dataframe_records", "routing_key", "event_time"}
    extra = sorted(set(payload) - allowed)
    if extra:
        raise _Reject(
            422, f"unknown top-level field(s) {extra}; expected 'records' and optional 'routing_key'"
        )
    if ("records" in payload) == ("dataframe_records" in payload):
        raise _Reject(422, "send the rows in exactly one field, 'records' (a list of objects)")
    key = payload.get("routing_key")
    if key is not None and (isinstance(key, bool) or not isinstance(key, str | int)):
        raise _Reject(422, "routing_key must be a string")
    key = None if key is None else _text(str(key), "routing_key")
    records = payload.get("records", payload.get("dataframe_records"))
    return records, key, _parse_event_time(payload.get("event_time"))


# The prediction logs store event times as nanoseconds in 64 bits (pandas, PostgreSQL via pandas):
# 1677-09-21 to 2262-04-11. Outside it the SQL log failed the whole micro-batch with a 503.
EVENT_TIME_LIMIT_MS = 9_223_372_036_854.0


def _parse_event_time(value: Any) -> float | None:
    """Epoch milliseconds from ISO 8601 with an offset, or from epoch seconds."""
    if value is None:
        return None
    ms = None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        ms = float(value) * 1000
    elif isinstance(value, str):
        try:
            stamp = datetime.fromisoformat(value)
        except ValueError:
            stamp = None
        if stamp is not None and stamp.tzinfo is not None:
            ms = stamp.timestamp() * 1000
    if ms is None:
        raise _Reject(
            422, "event_time must be ISO 8601 with a UTC offset (e.g. 2013-04-01T08:00:00Z) or epoch seconds"
        )
    if not abs(ms) < EVENT_TIME_LIMIT_MS:
        raise _Reject(422, "event_time must be between 1677-09-22 and 2262-04-11 (UTC)")
    return ms


def _feedback_payload(body: bytes, secret: bytes) -> list[dict[str, Any]]:
    """``{"feedback": [{"request_id": "...", "row": 0, "label": 1}, ...]}``, checked item by item;
    a request id this deployment did not issue is refused (nobody labels predictions it never made)."""
    payload = _json(body)
    items = payload.get("feedback") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items or set(payload) != {"feedback"}:
        raise _Reject(
            422, 'body must be {"feedback": [{"request_id": "...", "row": 0, "label": 0 or 1}, ...]}'
        )
    if len(items) > 100_000:
        raise _Reject(413, f"{len(items)} feedback items; the limit is 100000 per request")
    now, out, errors = time.time() * 1000, [], []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            errors.append({"loc": ["feedback", i], "msg": "must be an object"})
            continue
        extra = set(item) - {"request_id", "row", "label"}
        if extra:
            errors.append({"loc": ["feedback", i], "msg": f"unknown field(s) {sorted(extra)}"})
        rid, row, label = item.get("request_id"), item.get("row", 0), item.get("label")
        if not isinstance(rid, str) or not rid:
            errors.append({"loc": ["feedback", i, "request_id"], "msg": "must be a non-empty string"})
        elif not security.issued_here(secret, rid):
            errors.append(
                {"loc": ["feedback", i, "request_id"], "msg": "is not a request id this server issued"}
            )
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row <= MAX_ROW:
            errors.append({"loc": ["feedback", i, "row"], "msg": f"must be an integer from 0 to {MAX_ROW}"})
        if label not in (0, 1) or (not isinstance(label, bool | int)):
            errors.append({"loc": ["feedback", i, "label"], "msg": "must be 0, 1, true or false"})
        out.append({"request_id": rid, "row": row, "label": int(bool(label)), "ts": now})
        if len(errors) >= 50:
            break
    if errors:
        raise _Reject(422, "invalid feedback", errors)
    return out


def _openapi_body(config: ServingSettings) -> dict[str, Any]:
    record = config.record_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "records": {
                                "type": "array",
                                "items": record,
                                "minItems": 1,
                                "maxItems": config.max_rows,
                            },
                            "routing_key": {"type": "string"},
                        },
                        "required": ["records"],
                        "additionalProperties": False,
                    }
                }
            },
        }
    }


def create_app(config: ServingSettings | None = None) -> FastAPI:
    """The ASGI app (``uvicorn --factory pipelines.serving.app:create_app``)."""
    config = config or ServingSettings.from_env()
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        yield
        await server.stop()

    app = FastAPI(
        title=f"{config.model_name} model server",
        version="1",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.server = server

    @app.post("/predict", openapi_extra=_openapi_body(config), summary="Score one or many rows")
    async def predict(request: Request) -> Response:
        return await server.predict(request)

    @app.post("/feedback", summary="Record ground-truth labels by request id and row")
    async def feedback(request: Request) -> Response:
        return await server.feedback(request)

    @app.get("/health", summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", summary="A champion is loaded and can answer (details with the admin token)")
    async def ready(request: Request) -> Response:
        return await server.ready(request)

    # PlainTextResponse declares text/plain in the OpenAPI schema (the default class would say JSON)
    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if config.auth:
        app.add_middleware(security.ScopedBearerAuth, tokens=config.tokens)
    return app
