"""The Open Inference Protocol's endpoints of :class:`~pipelines.serving.server.Server` (a mixin:
the state is the server's). The codec (tensors to records, scores to outputs) is
:mod:`pipelines.serving.v2`; scoring is ``/predict``'s path (``_bounded`` and ``_predict``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from pipelines.serving import v2
from pipelines.serving.batching import Job
from pipelines.serving.registry import RegistryWatcher
from pipelines.serving.responses import ORJSONResponse, problem


class InferenceProtocol:
    """``/v2/models/<name>[/versions/<v>]``: infer, metadata and readiness."""

    # set by Server.__init__, and the server's own methods (pipelines.serving.server)
    watcher: RegistryWatcher
    log_outage: str | None
    _unknown_model: Callable[[str | None], Response | None]
    _bounded: Callable[..., Any]
    _predict: Callable[..., Any]

    async def infer(self, request: Request, model_name: str, version: str | None = None) -> Response:
        """``POST /v2/models/<name>[/versions/<v>]/infer``: the Open Inference Protocol, scored on
        the same path as ``/predict``; a version pins the champion or the challenger."""
        response = self._unknown_model(model_name)
        if response is None:
            header = request.headers.get(v2.HEADER_LENGTH)

            def parse(body: bytes) -> tuple:
                parsed = v2.parse_infer_request(body, header)
                return parsed.records, parsed.routing_key, parsed.event_time, parsed

            response = await self._bounded(request, self._predict, parse, self._v2_answer, version)
        return _v2_errors(response)

    def model_metadata(self, model_name: str, version: str | None = None) -> Response:
        """``GET /v2/models/<name>[/versions/<v>]``: versions served, inputs and outputs."""
        served = self.watcher.deployment.routes()
        response = self._unknown_model(model_name) or self._unserved(served, version)
        if response is None:
            model = next(m for m, _ in served if version in (None, m.version))
            versions = [m.version for m, _ in served]
            response = ORJSONResponse(v2.model_metadata(model_name, versions, model.schema))
        return _v2_errors(response)

    def model_ready(self, model_name: str, version: str | None = None) -> Response:
        """``GET /v2/models/<name>[/versions/<v>]/ready``: 200 when it can answer, else 503."""
        served = self.watcher.deployment.routes()
        response = self._unknown_model(model_name) or self._unserved(served, version)
        if response is None:
            ready = self.log_outage is None
            response = ORJSONResponse({"name": model_name, "ready": ready}, status_code=200 if ready else 503)
        return _v2_errors(response)

    def _unserved(self, served: list, version: str | None) -> Response | None:
        if not served:
            return problem(503, f"no model loaded yet: {self.watcher.last_error or 'loading'}")
        versions = sorted(m.version for m, _ in served)
        if version is not None and version not in versions:
            return problem(404, f"version {version!r} is not served; these are: {versions}")
        return None

    @staticmethod
    def _v2_answer(job: Job, model: Any, proba: Any, parsed: v2.InferRequest) -> Response:
        body, headers = v2.infer_response(
            parsed,
            model_name=model.name,
            model_version=model.version,
            request_id=job.request_id,
            route=job.route,
            threshold=model.threshold,
            proba=proba,
        )
        media = "application/json" if not headers else "application/octet-stream"
        return Response(body, media_type=media, headers=headers)


def _v2_errors(response: Response) -> Response:
    """An error answer in the V2 protocol's shape (``error``, and ``detail`` as on every endpoint)."""
    if response.status_code < 400:
        return response
    body = orjson.loads(response.body)
    answer = ORJSONResponse(
        v2.error_body(body.get("detail", ""), body.get("errors")), status_code=response.status_code
    )
    answer.headers.update({k: v for k, v in response.headers.items() if k in ("retry-after", "connection")})
    return answer
