"""The app factory: `create_app(settings)` wires the container in the lifespan, mounts every resource
router under the three URL dialects, installs the error table and the request-id headers."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from fastapi.routing import APIRoute

from openft import __version__
from openft.api.deps import DIALECT_CHECKS, PREFIXES
from openft.api.errors import install_error_handlers
from openft.api.routes import chat, completions, files, fine_tuning, health, models
from openft.services.container import Container, build_container
from openft.settings import Settings

log = logging.getLogger(__name__)
RESOURCE_ROUTERS = (files.router, fine_tuning.router, chat.router, completions.router, models.router)


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
        if built.worker is not None:
            built.worker.start()
        try:
            yield
        finally:
            built.close()

    app = FastAPI(
        title="openft",
        version=__version__,
        description="Self-hosted fine-tuning with the OpenAI / Azure AI Foundry fine-tuning API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    for dialect, prefix in PREFIXES.items():
        for router in RESOURCE_ROUTERS:
            app.include_router(
                router,
                prefix=prefix,
                dependencies=[Depends(DIALECT_CHECKS[dialect])],
                generate_unique_id_function=_unique_id(dialect.value.replace("-", "_")),
            )

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Azure responses carry `apim-request-id`; OpenAI's `x-request-id`. Both help support."""
        rid = request.headers.get("x-request-id") or f"req_{uuid.uuid4().hex}"
        response = await call_next(request)
        response.headers["x-request-id"] = rid
        response.headers["apim-request-id"] = rid
        return response

    return app
