"""The app factory: `create_app(settings)` wires the container in the lifespan, mounts every resource
router under the three URL dialects, installs the error table and the request-id headers."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute

from openft import __version__
from openft.api import dashboard
from openft.api.auth_gate import AuthGate
from openft.api.bodies import JsonBodyLimit, parse_json_off_loop
from openft.api.deps import AZURE_V1_VERSIONS, DATED_VERSION, DIALECT_CHECKS, GATED_PREFIXES, PREFIXES, Dialect
from openft.api.errors import install_error_handlers
from openft.api.routes import (
    batches,
    chat,
    checkpoint_permissions,
    completions,
    data_check,
    evals,
    files,
    fine_tuning,
    graders,
    health,
    metrics,
    models,
    responses,
    uploads,
)
from openft.api.routes.common import OpenApiResponses
from openft.protocol.common import ErrorResponse
from openft.services.container import Container, build_container
from openft.services.throttle import FailedKeyThrottle
from openft.settings import Settings

log = logging.getLogger(__name__)
RESOURCE_ROUTERS = (
    files.router,
    data_check.router,  # GET /files/{id}/check, openft's extension
    fine_tuning.router,
    chat.router,
    completions.router,
    models.router,
    uploads.router,
    checkpoint_permissions.router,
    responses.router,
    batches.router,
    graders.router,
    evals.router,
)
ERROR_RESPONSES: OpenApiResponses = {
    400: {"model": ErrorResponse, "description": "Invalid request; `error.param` names the field"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (`invalid_api_key`)"},
    403: {"model": ErrorResponse, "description": "The key may not do this"},
    404: {"model": ErrorResponse, "description": "No such object (or another organization's), or no such URL"},
    429: {"model": ErrorResponse, "description": "Rate limit reached (`Retry-After` says when to retry)"},
}
"""What every resource operation may answer besides its own responses; all in the OpenAI error envelope.
Documented so that clients (and the schema fuzzer in tests/api/fuzz) know every 4xx body's shape."""
AZURE_DATED_ROUTERS = (fine_tuning.azure_dated_router,)
"""Routes only Azure's dated API defines (DELETE of a job): mounted under its prefix alone, so the other
dialects answer them 405, as any method a URL does not serve."""
CREATED_ON_AZURE_DATED = ("upload_file", "create_job")
"""The routes (by function name) that answer 201 + Location on the Azure dated dialect (`created_status`)."""


def _id_prefix(dialect: Dialect) -> str:
    """Operation ids start with the dialect (`openai_`, `azure_v1_`, `azure_dated_`): one doc lists all three."""
    return dialect.value.replace("-", "_")


def _unique_id(prefix: str) -> Callable[[APIRoute], str]:
    def generate(route: APIRoute) -> str:
        method = sorted(route.methods)[0].lower() if route.methods else "any"
        return f"{prefix}_{route.name}_{method}"

    return generate


def create_app(settings: Settings | None = None, *, container: Container | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        built = container or build_container(settings)
        app.state.container = built
        built.start()
        try:
            yield
        finally:
            if built.responses is not None:
                await built.responses.stop_background()
            built.close()

    app = FastAPI(
        title="openft",
        version=__version__,
        description="Self-hosted fine-tuning with the OpenAI / Azure AI Foundry fine-tuning API.",
        lifespan=lifespan,
        # No /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc scripts from a CDN, and they would run on
        # the dashboard's origin, where the browser keeps the API key. /openapi.json stays for any viewer.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(dashboard.router)  # the web page at `/`; not in /openapi.json
    app.include_router(metrics.router)  # GET /metrics for admin keys; not in /openapi.json
    for router in RESOURCE_ROUTERS:
        parse_json_off_loop(router)  # JSON bodies parsed and checked for lone surrogates in a worker thread
    for dialect, prefix in PREFIXES.items():
        for router in RESOURCE_ROUTERS:
            app.include_router(
                router,
                prefix=prefix,
                dependencies=[Depends(DIALECT_CHECKS[dialect])],
                generate_unique_id_function=_unique_id(_id_prefix(dialect)),
                responses=ERROR_RESPONSES,
            )
    for router in AZURE_DATED_ROUTERS:
        app.include_router(
            router,
            prefix=PREFIXES[Dialect.AZURE_DATED],
            dependencies=[Depends(DIALECT_CHECKS[Dialect.AZURE_DATED])],
            generate_unique_id_function=_unique_id(_id_prefix(Dialect.AZURE_DATED)),
            responses=ERROR_RESPONSES,
        )
    _finish_openapi(app)
    app.add_middleware(JsonBodyLimit)
    # Outside JsonBodyLimit: the key is checked from the headers before anything reads the body.
    throttle = FailedKeyThrottle(settings.auth_failure_limit, settings.auth_failure_window_seconds)
    gated = (*GATED_PREFIXES, metrics.METRICS_PATH)
    app.add_middleware(AuthGate, prefixes=gated, throttle=throttle)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Azure responses carry `apim-request-id`; OpenAI's `x-request-id`. Both help support."""
        rid = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        response.headers["apim-request-id"] = rid
        return response

    return app


def _api_version_parameter(dialect: Dialect) -> dict[str, Any] | None:
    """The `api-version` query parameter the Azure dialects read (checked by `deps.DIALECT_CHECKS`)."""
    if dialect is Dialect.AZURE_DATED:
        schema: dict[str, Any] = {
            "type": "string",
            "pattern": f"^{DATED_VERSION.pattern}$",
            "example": "2025-04-01-preview",
        }
        return {"name": "api-version", "in": "query", "required": True, "schema": schema}
    if dialect in (Dialect.AZURE_V1, Dialect.FOUNDRY_PROJECT):
        schema = {"type": "string", "enum": list(AZURE_V1_VERSIONS)}
        return {"name": "api-version", "in": "query", "required": False, "schema": schema}
    return None


def _finish_openapi(app: FastAPI) -> None:
    """Make `/openapi.json` say what the server does, which FastAPI's generated document does not:

    - validation errors are 400 in the OpenAI envelope (errors.py), never FastAPI's 422, so the 422
      responses and their `HTTPValidationError` schemas are dropped;
    - the Azure dialects take `api-version` as a query parameter, checked in a router dependency that
      FastAPI cannot see, so it is added to each of their operations;
    - the Azure dated dialect answers creates with 201 (`routes.common.created_status`), not 200;
    - every resource operation needs the key (`auth_gate.AuthGate`), as a bearer token or `api-key` header.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                responses.pop("422", None)
                operation_id = operation.get("operationId", "")
                dialect = next((d for d in Dialect if operation_id.startswith(_id_prefix(d) + "_")), None)
                if dialect is None:
                    continue  # /health
                operation["security"] = [{"bearer": []}, {"api-key": []}]
                parameter = _api_version_parameter(dialect)
                if parameter is not None:
                    operation["parameters"] = [*operation.get("parameters", []), parameter]
                created = {f"{_id_prefix(dialect)}_{name}_post" for name in CREATED_ON_AZURE_DATED}
                if dialect is Dialect.AZURE_DATED and operation_id in created and "200" in responses:
                    responses["201"] = responses.pop("200")
        components = document.setdefault("components", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
            "api-key": {"type": "apiKey", "in": "header", "name": "api-key", "description": "Azure's header"},
        }
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
