"""The model server: FastAPI on uvicorn, micro-batched, every answer logged before it is sent.

Endpoints: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /ready``,
``GET /metrics``; the same by the model's name (``/models/<name>/predict``, ``/feedback``); and the
Open Inference Protocol, the "V2" REST protocol of KServe, MLServer and Triton (``/v2``,
``/v2/health/{live,ready}``, ``/v2/models/<name>[/versions/<v>]``, ``.../ready``, ``.../infer``;
:mod:`pipelines.serving.v2`). With tokens configured, each endpoint needs the token of its scope
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

from fastapi import FastAPI, Path, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipelines import __version__
from pipelines.serving import security, v2
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


PROBLEM: dict[str, Any] = {
    "description": "What is wrong, in words (and by field, when there are several problems)",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}, "errors": {"type": "array"}},
                "required": ["detail"],
            }
        }
    },
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

    _add_named_routes(app, server, config)
    if config.auth:
        app.add_middleware(security.ScopedBearerAuth, tokens=config.tokens)
    return app


def _add_named_routes(app: FastAPI, server: Server, config: ServingSettings) -> None:
    """``/models/<name>/...`` and the Open Inference Protocol (``/v2/...``), by the model's name."""

    # An unknown name is a 404, a bad body a 422, both {"detail": "..."} (not FastAPI's own 422)
    problems: dict[int | str, dict[str, Any]] = {code: PROBLEM for code in (404, 422)}

    # A default, not an Annotated alias: with `from __future__ import annotations` FastAPI cannot
    # resolve a type alias local to this function (every such route answered 500).
    def name() -> Any:  # the served name, shown in the schema (any other name is a 404 naming it)
        return Path(json_schema_extra={"enum": [config.model_name]})

    infer = v2.openapi_infer(list(config.record_schema()["properties"]), config.max_rows)

    @app.post(
        "/models/{model_name}/predict",
        responses=problems,
        openapi_extra=_openapi_body(config),
        summary="/predict, by name",
    )
    async def predict_named(request: Request, model_name: str = name()) -> Response:
        return await server.predict(request, model_name)

    @app.post("/models/{model_name}/feedback", responses=problems, summary="/feedback, by name")
    async def feedback_named(request: Request, model_name: str = name()) -> Response:
        return await server.feedback(request, model_name)

    @app.get("/v2", summary="V2: server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "mlops-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="V2: the process is up")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="V2: a champion is loaded and can answer")
    async def v2_ready(request: Request) -> Response:
        answer = await server.ready(request)
        return ORJSONResponse({"ready": answer.status_code == 200}, status_code=answer.status_code)

    @app.get("/v2/models/{model_name}", responses=problems, summary="V2: model metadata")
    async def v2_model(model_name: str = name()) -> Response:
        return server.model_metadata(model_name)

    @app.get(
        "/v2/models/{model_name}/versions/{version}",
        responses=problems,
        summary="V2: metadata of one served version",
    )
    async def v2_model_version(model_name: str = name(), version: str = Path()) -> Response:
        return server.model_metadata(model_name, version)

    @app.get("/v2/models/{model_name}/ready", responses=problems, summary="V2: the model can answer")
    async def v2_model_ready(model_name: str = name()) -> Response:
        return server.model_ready(model_name)

    @app.get(
        "/v2/models/{model_name}/versions/{version}/ready",
        responses=problems,
        summary="V2: this version can answer",
    )
    async def v2_version_ready(model_name: str = name(), version: str = Path()) -> Response:
        return server.model_ready(model_name, version)

    @app.post(
        "/v2/models/{model_name}/infer", responses=problems, openapi_extra=infer, summary="V2: score tensors"
    )
    async def v2_infer(request: Request, model_name: str = name()) -> Response:
        return await server.infer(request, model_name)

    @app.post(
        "/v2/models/{model_name}/versions/{version}/infer",
        responses=problems,
        openapi_extra=infer,
        summary="V2: score with one version",
    )
    async def v2_infer_version(request: Request, model_name: str = name(), version: str = Path()) -> Response:
        return await server.infer(request, model_name, version)
