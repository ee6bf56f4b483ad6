"""The one place where errors become HTTP: domain error class → status code and OpenAI envelope.

Everything that leaves the server as an error has the shape `{"error": {message, type, param,
code}}`, including framework errors (unknown URL, malformed JSON, validation) and crashes, because
the SDKs read `body["error"]` to build their exceptions.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from openft.errors import (
    ContextLengthExceeded,
    InvalidJobState,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    OpenFTError,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
)
from openft.redact import redact_paths

log = logging.getLogger(__name__)

# (status, type, extra headers). Most specific classes first: lookup walks the MRO.
ERROR_TABLE: dict[type[OpenFTError], tuple[int, str, dict[str, str]]] = {
    ContextLengthExceeded: (400, "invalid_request_error", {}),
    InvalidRequest: (400, "invalid_request_error", {}),
    Unauthorized: (401, "invalid_request_error", {}),
    PermissionDenied: (403, "invalid_request_error", {}),
    ModelNotFound: (404, "invalid_request_error", {}),
    NotFound: (404, "invalid_request_error", {}),
    # 409 is retried by the SDKs unless told not to (docs/api-compatibility.md §3)
    InvalidJobState: (409, "invalid_request_error", {"x-should-retry": "false"}),
    PayloadTooLarge: (413, "invalid_request_error", {"x-should-retry": "false"}),
    # OpenAI's type for request-rate limits; `Retry-After` is added per error (see error_response)
    RateLimited: (429, "requests", {}),
    # an organization's quota (services/quotas.py): retrying the same request soon would fail the same way
    QuotaExceeded: (429, "insufficient_quota", {"x-should-retry": "false"}),
    ServiceUnavailable: (503, "server_error", {}),
}


INVALID_JSON_MESSAGE = "We could not parse the JSON body of your request. The request body must be valid JSON."
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
"""FastAPI's 400 when reading the body fails other than by a JSON syntax error: a body that is not UTF-8,
or nesting deeper than the parser's recursion limit. It is the same client mistake as malformed JSON."""


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error body. Messages and params may quote client input, which may hold lone surrogates
    that UTF-8 cannot encode; they are written as `\\udc00` escapes so the error itself never fails."""
    return {"error": {"message": _printable(message), "type": type_, "param": _printable(param), "code": code}}


def _printable(text: str | None) -> str | None:
    return text if text is None or text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(exc: OpenFTError) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, type_, headers = ERROR_TABLE[cls]
            break
    else:
        status, type_, headers = 500, "server_error", {}
    retry_after = getattr(exc, "retry_after", None)  # RateLimited always, ServiceUnavailable when it knows
    if isinstance(exc, RateLimited | ServiceUnavailable) and retry_after is not None:
        headers = {**headers, "Retry-After": str(max(1, math.ceil(retry_after)))}
    message = redact_paths(exc.message)  # tenants read errors: a server path (from an exception's text) is not theirs
    return JSONResponse(envelope(message, type_, exc.param, exc.code), status_code=status, headers=headers)


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic adds the union member or the constraint function to the location; drop those
    parts = [
        p
        for p in parts
        if not p.startswith(("function-", "literal[", "constrained-")) and p not in ("int", "float", "str")
    ]
    return ".".join(parts) or None


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return JSONResponse(envelope(INVALID_JSON_MESSAGE, "invalid_request_error", None, "invalid_json"), 400)
    param = _param_from_loc(tuple(first.get("loc", ())))
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'."
        code = "missing_required_parameter"
    elif first.get("type") == "extra_forbidden":
        message = f"Unrecognized request argument supplied: {param}"
        code = "unknown_parameter"
    else:
        detail = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        message = f"Invalid value for '{param}': {detail}." if param else f"Invalid request: {detail}."
        code = "invalid_value"
    if len(errors) > 1:
        message += f" ({len(errors) - 1} more problem(s) in the request.)"
    return JSONResponse(envelope(message, "invalid_request_error", param, code), status_code=400)


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this URL. Starlette's own 405 names only the methods of the first
    route whose path matched, so `GET /files/{id}` hid `DELETE /files/{id}` from `Allow` (RFC 9110 §15.5.6).
    Each method is tried against the routes (`matches` is all a route promises, however routers nest)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenFTError)
    async def _domain(_request: Request, exc: OpenFTError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
            return JSONResponse(envelope(INVALID_JSON_MESSAGE, "invalid_request_error", None, "invalid_json"), 400)
        if exc.status_code == 413:  # bodies.JsonBodyLimit; uploads raise PayloadTooLarge (file_too_large) instead
            return JSONResponse(
                envelope(str(exc.detail), "invalid_request_error", None, "request_too_large"),
                status_code=413,
                headers={"x-should-retry": "false"},
            )
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method not allowed: {request.method} {request.url.path}"
        else:
            message = str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request)
        type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return JSONResponse(envelope(message, type_), status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            envelope("The server had an error while processing your request.", "server_error"), status_code=500
        )
