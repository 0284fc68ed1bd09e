"""The model server's answers: JSON rendered with orjson, problem bodies, and request rejections."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse, Response


class ORJSONResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def problem(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> ORJSONResponse:
    """An error answer: ``{"detail": message}``, with ``errors`` naming each problem if given."""
    body: dict[str, Any] = {"detail": message}
    if errors:
        body["errors"] = errors
    return ORJSONResponse(body, status_code=status)


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
