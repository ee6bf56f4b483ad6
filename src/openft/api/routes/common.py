"""Small helpers shared by the resource routers."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import Request

from openft.api.deps import Dialect
from openft.services.container import Container

OpenApiResponses = dict[int | str, dict[str, Any]]
"""A route's extra `responses=` (status → OpenAPI response object), typed as FastAPI's parameter is: an
unannotated literal is inferred as `dict[int, dict[str, object]]`, which that parameter does not accept."""


def container(request: Request) -> Container:
    return request.app.state.container


def created_status(dialect: Dialect) -> int:
    """The Azure dated API answers creates with 201 and a Location header; the others with 200."""
    return 201 if dialect is Dialect.AZURE_DATED else 200


def location(request: Request, path: str) -> str:
    """The created object's URL; the client's `api-version` is percent-encoded, as it ends up in a header."""
    version = request.query_params.get("api-version")
    return f"/openai{path}" + (f"?api-version={quote(version, safe='')}" if version else "")
