"""Small helpers shared by the resource routers."""

from __future__ import annotations

from fastapi import Request

from openft.api.deps import Dialect
from openft.services.container import Container


def container(request: Request) -> Container:
    return request.app.state.container


def created_status(dialect: Dialect) -> int:
    """The Azure dated API answers creates with 201 and a Location header; the others with 200."""
    return 201 if dialect is Dialect.AZURE_DATED else 200


def location(request: Request, path: str) -> str:
    version = request.query_params.get("api-version")
    return f"/openai{path}" + (f"?api-version={version}" if version else "")
