"""The model server: FastAPI on uvicorn, micro-batched, every answer logged before it is sent.

Endpoints: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /ready``,
``GET /metrics``. With tokens configured, each endpoint needs the token of its scope
(``pipelines.serving.security``).

The request path is lean on purpose: the body is parsed with orjson and
checked against the model's signature by hand, concurrent requests are scored
together in one model call (adaptive micro-batching: it waits, at most
``max_wait_ms``, only while more requests are in flight), and the model call
runs in one worker thread so the event loop keeps accepting requests.

This module wires the app (routes, auth, OpenAPI); the request handling is
:class:`pipelines.serving.server.Server`.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines.serving import security
from pipelines.serving.config import ServingSettings
from pipelines.serving.responses import ORJSONResponse
from pipelines.serving.server import Server


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
