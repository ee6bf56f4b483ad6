"""The one place where errors become HTTP: domain error class → status code and OpenAI envelope.

Everything that leaves the server as an error has the shape `{"error": {message, type, param,
code}}`, including framework errors (unknown URL, malformed JSON, validation) and crashes, because
the SDKs read `body["error"]` to build their exceptions.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openft.errors import (
    ContextLengthExceeded,
    InvalidJobState,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    OpenFTError,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    Unauthorized,
)

log = logging.getLogger(__name__)

# (status, type, extra headers). Most specific classes first: lookup walks the MRO.
ERROR_TABLE: dict[type[OpenFTError], tuple[int, str, dict[str, str]]] = {
    ContextLengthExceeded: (400, "invalid_request_error", {}),
    InvalidRequest: (400, "invalid_request_error", {}),
    Unauthorized: (401, "invalid_request_error", {}),
    PermissionDenied: (403, "invalid_request_error", {}),
    ModelNotFound: (404, "invalid_request_error", {}),
    NotFound: (404, "invalid_request_error", {}),
    # 409 is retried by the SDKs unless told not to (api-spec.md §10 decision 1)
    InvalidJobState: (409, "invalid_request_error", {"x-should-retry": "false"}),
    PayloadTooLarge: (413, "invalid_request_error", {"x-should-retry": "false"}),
    ServiceUnavailable: (503, "server_error", {}),
}


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(exc: OpenFTError) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            status, type_, headers = ERROR_TABLE[cls]  # type: ignore[index]
            break
    else:
        status, type_, headers = 500, "server_error", {}
    return JSONResponse(envelope(exc.message, type_, exc.param, exc.code), status_code=status, headers=headers)


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
        return JSONResponse(
            envelope(
                "We could not parse the JSON body of your request. The request body must be valid JSON.",
                "invalid_request_error",
                None,
                "invalid_json",
            ),
            status_code=400,
        )
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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenFTError)
    async def _domain(_request: Request, exc: OpenFTError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})"
        elif exc.status_code == 405:
            message = f"Method not allowed: {request.method} {request.url.path}"
        else:
            message = str(exc.detail)
        type_ = "server_error" if exc.status_code >= 500 else "invalid_request_error"
        return JSONResponse(
            envelope(message, type_), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            envelope("The server had an error while processing your request.", "server_error"), status_code=500
        )
