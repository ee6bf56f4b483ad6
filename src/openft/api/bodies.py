"""Checks on JSON request bodies that pydantic cannot make: their size, and their strings' Unicode.

`{"metadata": {"k": "\\ud800"}}` is valid JSON syntax, and `json.loads` turns the escape into a lone UTF-16
surrogate: a Python `str` that cannot be encoded as UTF-8. pydantic lets such a string through fields
without constraints (`metadata` values, message `content`, …); the job was then stored, and the response
(or the worker's job file, or a tokenizer) failed to encode it: a 500 after the job already existed.
Like OpenAI's API, openft refuses such a body up front with a 400 naming the field.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.api.errors import envelope
from openft.errors import InvalidRequest

MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body outside uploads (jobs, chat, completions): FastAPI buffers and parses a JSON body
whole before the handler (and the API key check) runs, so without a bound any client could make the server
hold gigabytes. 16 MiB is far above any model context; uploads stream through `POST /files` with their own
limit (`OPENFT_MAX_UPLOAD_BYTES`)."""
TOO_LARGE_MESSAGE = (
    f"The request body is larger than {MAX_JSON_BODY_BYTES // (1024 * 1024)} MiB, the limit for JSON requests; "
    "send large data as a file with POST /files."
)


def _is_upload(scope: Scope) -> bool:
    """`POST /v1/files`, `/openai/v1/files`, `/openai/files`: multipart, streamed to disk by its handler."""
    return scope["method"] == "POST" and str(scope["path"]).rstrip("/").endswith("/files")


class JsonBodyLimit:
    """ASGI middleware enforcing MAX_JSON_BODY_BYTES on every request but uploads, in the OpenAI envelope.

    A declared Content-Length over the limit is answered at once (413 `request_too_large`) without reading
    the body; a chunked body is counted as it arrives and stopped at the limit (the 413 then comes from
    the error handlers, as an HTTPException raised while FastAPI reads the body). FastAPI's own
    `max_body_size` answers a declared length with plain text, which the SDKs cannot read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _is_upload(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            body = envelope(TOO_LARGE_MESSAGE, "invalid_request_error", None, "request_too_large")
            await JSONResponse(body, status_code=413, headers={"x-should-retry": "false"})(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413, detail=TOO_LARGE_MESSAGE)
            return message

        await self.app(scope, limited, send)


def lone_surrogate_path(value: Any) -> str | None:
    """The dotted path (`metadata.k`, `messages.0.content`) of the first string, key or value, that is
    not valid Unicode; None when there is none. Iterative, so deep nesting cannot exhaust the stack."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return ".".join(path) or "body"
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = (*path, str(key))
                if isinstance(key, str) and not _encodable(key):
                    return ".".join(child_path)  # errors.envelope escapes the surrogate when it is quoted
                stack.append((child_path, child))
        elif isinstance(item, list):
            stack.extend(((*path, str(index)), child) for index, child in enumerate(item))
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def reject_lone_surrogates(request: Request) -> None:
    """Router dependency: 400 for a JSON body holding a lone surrogate, before the handler runs.

    Only routes that declare a JSON body are looked at, and FastAPI has parsed that body already
    (`request.json()` is cached), so nothing is read twice; uploads (multipart, streamed by their
    handler) are never touched.
    """
    route = request.scope.get("route")
    if getattr(route, "body_field", None) is None or not _is_json(request.headers.get("content-type")):
        return
    if not await request.body():
        return
    try:
        body = await request.json()
    except ValueError:  # malformed JSON was already answered with 400 invalid_json by FastAPI
        return
    where = lone_surrogate_path(body)
    if where is not None:
        raise InvalidRequest(
            f"Invalid value for '{where}': the string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
            "escape), which is not valid Unicode.",
            param=where,
            code="invalid_value",
        )
