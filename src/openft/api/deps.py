"""Request dependencies: the URL dialect, the caller's identity and the services.

Four URL families reach one set of handlers (docs/api-compatibility.md §1): `/v1/...` (OpenAI),
`/openai/v1/...` (Azure v1; `api-version` optional, `v1` or `preview`), `/openai/...` (Azure
dated; `api-version=YYYY-MM-DD[-preview]` required) and Foundry's project-scoped
`/api/projects/{project}/openai/v1/...`, which is the Azure v1 API (the project is recorded, not used).
The dialect only changes details the Azure dated API defines differently (201 + Location on create); the
statuses and objects are the same.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request

from openft.api.auth_gate import PRINCIPAL_STATE_KEY
from openft.errors import InvalidRequest
from openft.services.auth import Principal


class Dialect(enum.StrEnum):
    OPENAI = "openai"  # /v1
    AZURE_V1 = "azure-v1"  # /openai/v1
    AZURE_DATED = "azure-dated"  # /openai?api-version=YYYY-MM-DD[-preview]
    FOUNDRY_PROJECT = "foundry-project"  # /api/projects/{project}/openai/v1: Azure v1 under a Foundry project


PREFIXES = {
    Dialect.OPENAI: "/v1",
    Dialect.AZURE_V1: "/openai/v1",
    Dialect.AZURE_DATED: "/openai",
    Dialect.FOUNDRY_PROJECT: "/api/projects/{project}/openai/v1",
}
GATED_PREFIXES = tuple(dict.fromkeys(prefix.split("/{", 1)[0] for prefix in PREFIXES.values()))
"""What `auth_gate.AuthGate` guards: each prefix up to its first path parameter (`/api/projects`), since the
gate matches literal prefixes; everything under `/api/projects` needs the key, as under `/openai`."""
AZURE_V1_VERSIONS = ("v1", "preview")
DATED_VERSION = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?")
"""Matched whole (`fullmatch`): `^…$` let a trailing newline through, and `\\d` any Unicode digit; the version
is echoed into the `Location` header, where a newline broke the response."""


def _check_azure_v1(request: Request) -> None:
    version = request.query_params.get("api-version")
    if version is not None and version not in AZURE_V1_VERSIONS:
        raise InvalidRequest(
            f"Unsupported api-version {version!r} for /openai/v1; use 'v1' or 'preview' (or leave it out).",
            param="api-version",
            code="unsupported_api_version",
        )
    request.state.dialect = Dialect.AZURE_V1


def _check_foundry_project(request: Request, project: Annotated[str, Path(min_length=1, max_length=256)]) -> None:
    """Foundry's project endpoint (`https://<resource>.services.ai.azure.com/api/projects/<project>/openai/v1`)
    is the Azure v1 API; openft has no Foundry projects, so the name is only recorded on the request."""
    _check_azure_v1(request)
    request.state.foundry_project = project


def _check_azure_dated(request: Request) -> None:
    version = request.query_params.get("api-version")
    if version is None:
        raise InvalidRequest(
            "Missing required query parameter 'api-version' (for example 2025-04-01-preview).",
            param="api-version",
            code="missing_api_version",
        )
    if not DATED_VERSION.fullmatch(version):
        raise InvalidRequest(
            f"Malformed api-version {version!r}; expected YYYY-MM-DD or YYYY-MM-DD-preview.",
            param="api-version",
            code="unsupported_api_version",
        )
    request.state.dialect = Dialect.AZURE_DATED


def _set_openai(request: Request) -> None:
    request.state.dialect = Dialect.OPENAI


DIALECT_CHECKS: dict[Dialect, Callable[..., None]] = {
    Dialect.OPENAI: _set_openai,
    Dialect.AZURE_V1: _check_azure_v1,
    Dialect.AZURE_DATED: _check_azure_dated,
    Dialect.FOUNDRY_PROJECT: _check_foundry_project,
}


def get_dialect(request: Request) -> Dialect:
    return getattr(request.state, "dialect", Dialect.OPENAI)


DialectDep = Annotated[Dialect, Depends(get_dialect)]


async def get_principal(request: Request) -> Principal:
    """The caller, as `auth_gate.AuthGate` found it from the headers before the body was read. `create_app`
    puts the gate in front of every resource prefix, so a route reached without a principal is a wiring bug.
    `async` so FastAPI reads it on the event loop rather than in a worker thread."""
    principal = getattr(request.state, PRINCIPAL_STATE_KEY, None)
    if not isinstance(principal, Principal):
        raise RuntimeError(f"{request.url.path} was reached without passing AuthGate; is the route under a prefix?")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
