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

import orjson
from fastapi import FastAPI, Path, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from pipelines import __version__
from pipelines.serving import security, v2
from pipelines.serving.config import ServingSettings
from pipelines.serving.responses import ORJSONResponse, problem
from pipelines.serving.server import Budget, Server


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


def create_app(config: ServingSettings | list[ServingSettings] | None = None) -> FastAPI:
    """The ASGI app (``uvicorn --factory pipelines.serving.app:create_app``).

    One model (``MLOPS_CONFIG``) is served on ``/predict`` and by its name; a catalogue
    (``MLOPS_CONFIG_DIR``) serves every model by its name (``/models/<name>/predict``,
    ``/v2/models/<name>/infer``), each with its own champion, rollout, prediction log and metrics.
    """
    broken: dict[str, str] = {}
    if config is None:
        configs, broken = ServingSettings.for_models()
    else:
        configs = config if isinstance(config, list) else [config]
    budget = Budget.of(configs[0])  # one memory bound for the process, whatever the number of models
    servers = {c.model_name: Server(c, budget) for c in configs}
    models = Models(servers, broken)
    first = configs[0]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for server in servers.values():
            await server.start()
        yield
        for server in servers.values():
            await server.stop()

    title = first.model_name if models.single else f"{len(servers)} models"
    app = FastAPI(
        title=f"{title} model server", version="1", lifespan=lifespan, default_response_class=ORJSONResponse
    )
    app.state.server = models.single  # None when several models are served
    app.state.servers = servers

    @app.post(
        "/predict",
        openapi_extra=_openapi_body(first) if models.single else None,
        summary="Score one or many rows" + ("" if models.single else " (one model only: name it instead)"),
    )
    async def predict(request: Request) -> Response:
        return await models.pick(None).predict(request) if models.single else models.unnamed("predict")

    @app.post("/feedback", summary="Record ground-truth labels by request id and row")
    async def feedback(request: Request) -> Response:
        return await models.pick(None).feedback(request) if models.single else models.unnamed("feedback")

    @app.get("/health", summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready", summary="Every model has a champion loaded and can answer (details with the admin token)"
    )
    async def ready(request: Request) -> Response:
        return await models.ready(request)

    # PlainTextResponse declares text/plain in the OpenAPI schema (the default class would say JSON)
    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(models.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    _add_named_routes(app, models, first)
    if first.auth:
        app.add_middleware(security.ScopedBearerAuth, tokens=first.tokens)
    return app


class Models:
    """The served models by name: which one a request names, and what they say together."""

    def __init__(self, servers: dict[str, Server], broken: dict[str, str] | None = None):
        self.servers = servers
        self.broken = broken or {}
        self.single = next(iter(servers.values())) if len(servers) == 1 else None
        self.metrics_registry = self.single.metrics.registry if self.single else metrics_by_model(servers)

    def pick(self, model_name: str | None) -> Server:
        """The server of ``model_name``; with one model, that one (it answers a wrong name itself)."""
        if self.single is not None:
            return self.single
        return self.servers[model_name]  # type: ignore[index]  # checked by ``missing`` first

    def missing(self, model_name: str) -> Response | None:
        """A 404 naming the served models when ``model_name`` is not one of them (None otherwise)."""
        if self.single is not None or model_name in self.servers:
            return None
        if model_name in self.broken:
            return problem(404, f"model {model_name!r} is not served: its config does not load: "
                                f"{self.broken[model_name]}")  # fmt: skip
        return problem(404, f"no model {model_name!r} here; this server serves {sorted(self.servers)}")

    def unnamed(self, endpoint: str) -> Response:
        return problem(
            404,
            f"this server serves {len(self.servers)} models {sorted(self.servers)}: name one, "
            f"/models/<name>/{endpoint} or /v2/models/<name>/infer",
        )

    async def ready(self, request: Request) -> Response:
        """200 when every served model can answer; with several, each model's answer by name."""
        if self.single is not None:
            return await self.single.ready(request)
        answers = {name: await server.ready(request) for name, server in self.servers.items()}
        status = 200 if all(a.status_code == 200 for a in answers.values()) else 503
        body = {name: orjson.loads(a.body) for name, a in answers.items()}
        return ORJSONResponse({"ready": status == 200, "models": body}, status_code=status)


def _add_named_routes(app: FastAPI, models: Models, config: ServingSettings) -> None:
    """``/models/<name>/...`` and the Open Inference Protocol (``/v2/...``), by the model's name."""

    # An unknown name is a 404, a bad body a 422, both {"detail": "..."} (not FastAPI's own 422)
    problems: dict[int | str, dict[str, Any]] = {code: PROBLEM for code in (404, 422)}
    served = sorted(models.servers)

    # A default, not an Annotated alias: with `from __future__ import annotations` FastAPI cannot
    # resolve a type alias local to this function (every such route answered 500).
    def name() -> Any:  # the served names, shown in the schema (any other name is a 404 naming them)
        return Path(json_schema_extra={"enum": served})

    single = models.single is not None
    infer = v2.openapi_infer(list(config.record_schema()["properties"]), config.max_rows) if single else None

    @app.post(
        "/models/{model_name}/predict",
        responses=problems,
        openapi_extra=_openapi_body(config) if single else None,
        summary="/predict, by name",
    )
    async def predict_named(request: Request, model_name: str = name()) -> Response:
        if (missing := models.missing(model_name)) is not None:
            return missing
        return await models.pick(model_name).predict(request, model_name)

    @app.post("/models/{model_name}/feedback", responses=problems, summary="/feedback, by name")
    async def feedback_named(request: Request, model_name: str = name()) -> Response:
        if (missing := models.missing(model_name)) is not None:
            return missing
        return await models.pick(model_name).feedback(request, model_name)

    @app.get("/v2", summary="V2: server metadata")
    async def v2_server() -> dict[str, Any]:
        return {"name": "mlops-model-server", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", summary="V2: the process is up")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", summary="V2: every model has a champion loaded and can answer")
    async def v2_ready(request: Request) -> Response:
        answer = await models.ready(request)
        return ORJSONResponse({"ready": answer.status_code == 200}, status_code=answer.status_code)

    @app.get("/v2/models/{model_name}", responses=problems, summary="V2: model metadata")
    async def v2_model(model_name: str = name()) -> Response:
        return models.missing(model_name) or models.pick(model_name).model_metadata(model_name)

    @app.get(
        "/v2/models/{model_name}/versions/{version}",
        responses=problems,
        summary="V2: metadata of one served version",
    )
    async def v2_model_version(model_name: str = name(), version: str = Path()) -> Response:
        return models.missing(model_name) or models.pick(model_name).model_metadata(model_name, version)

    @app.get("/v2/models/{model_name}/ready", responses=problems, summary="V2: the model can answer")
    async def v2_model_ready(model_name: str = name()) -> Response:
        return models.missing(model_name) or models.pick(model_name).model_ready(model_name)

    @app.get(
        "/v2/models/{model_name}/versions/{version}/ready",
        responses=problems,
        summary="V2: this version can answer",
    )
    async def v2_version_ready(model_name: str = name(), version: str = Path()) -> Response:
        return models.missing(model_name) or models.pick(model_name).model_ready(model_name, version)

    @app.post(
        "/v2/models/{model_name}/infer", responses=problems, openapi_extra=infer, summary="V2: score tensors"
    )
    async def v2_infer(request: Request, model_name: str = name()) -> Response:
        if (missing := models.missing(model_name)) is not None:
            return missing
        return await models.pick(model_name).infer(request, model_name)

    @app.post(
        "/v2/models/{model_name}/versions/{version}/infer",
        responses=problems,
        openapi_extra=infer,
        summary="V2: score with one version",
    )
    async def v2_infer_version(request: Request, model_name: str = name(), version: str = Path()) -> Response:
        if (missing := models.missing(model_name)) is not None:
            return missing
        return await models.pick(model_name).infer(request, model_name, version)


# Process-wide families (the interpreter's collector, the event loop): shown once, without a model.
PROCESS_WIDE = ("python_gc_", "mlops_gc_", "mlops_event_loop_lag")


def metrics_by_model(servers: dict[str, Server]) -> CollectorRegistry:
    """One registry with every server's metrics, each sample labelled with its ``model``."""

    class ByModel:
        def collect(self) -> Any:
            families: dict[str, Metric] = {}
            for index, (model, server) in enumerate(servers.items()):
                for family in server.metrics.registry.collect():
                    process_wide = family.name.startswith(PROCESS_WIDE)
                    if process_wide and index:
                        continue
                    merged = families.setdefault(
                        family.name, Metric(family.name, family.documentation, family.type, family.unit)
                    )
                    for sample in family.samples:
                        labels = sample.labels if process_wide else {**sample.labels, "model": model}
                        merged.add_sample(
                            sample.name, labels, sample.value, sample.timestamp, sample.exemplar
                        )
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ByModel())
    return registry
