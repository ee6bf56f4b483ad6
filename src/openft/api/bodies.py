"""Checks on JSON request bodies that pydantic cannot make: their size, and their strings' Unicode.

`{"metadata": {"k": "\\ud800"}}` is valid JSON syntax, and `json.loads` turns the escape into a lone UTF-16
surrogate: a Python `str` that cannot be encoded as UTF-8. pydantic lets such a string through fields
without constraints (`metadata` values, message `content`, …); the job was then stored, and the response
(or the worker's job file, or a tokenizer) failed to encode it: a 500 after the job already existed.
Like OpenAI's API, openft refuses such a body up front with a 400 naming the field.

Large bodies are parsed and checked in a worker thread (`OffLoopJsonRoute`), not on the event loop.
"""

from __future__ import annotations

import email.message
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openft.api.errors import INVALID_JSON_MESSAGE, envelope
from openft.api.threads import run_in_pool
from openft.errors import InvalidRequest

MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
"""Largest request body outside uploads (jobs, chat, completions): FastAPI buffers and parses a JSON body
whole before the handler runs (only once the key is accepted, see `auth_gate`), so without a bound a client
could make the server hold gigabytes. 16 MiB is far above any model context; uploads stream through
`POST /files` with their own limit (`OPENFT_MAX_UPLOAD_BYTES`)."""
TOO_LARGE_MESSAGE = (
    f"The request body is larger than {MAX_JSON_BODY_BYTES // (1024 * 1024)} MiB, the limit for JSON requests; "
    "send large data as a file with POST /files."
)


_UPLOAD_PART = re.compile(r"/uploads/[^/]+/parts$")


def _is_upload(scope: Scope) -> bool:
    """`POST /v1/files`, `/openai/v1/files`, `/openai/files` and `POST …/uploads/{id}/parts` (parts of up to
    64 MB): multipart, streamed to the blob store by their handlers, which bound them."""
    path = str(scope["path"]).rstrip("/")
    return scope["method"] == "POST" and (path.endswith("/files") or _UPLOAD_PART.search(path) is not None)


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


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
"""How a surrogate gets into a string parsed from UTF-8 JSON: a `\\ud800`-`\\udfff` escape, or the three bytes
that would encode one (`json.loads` decodes bytes with `surrogatepass`). An escaped backslash followed by
`ud800` matches too; that only costs a walk that finds nothing."""


def may_hold_surrogates(body: bytes) -> bool:
    """Whether the body can hold a surrogate at all: one regex scan (milliseconds for 16 MiB) spares the walk
    of every parsed string (seconds for millions of small objects) for nearly every body. Bodies in UTF-16 or
    UTF-32 (which `json.loads` also reads) are always walked."""
    if json.detect_encoding(body) not in ("utf-8", "utf-8-sig"):
        return True
    return SURROGATE_ESCAPE.search(body) is not None


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


def is_json_body(content_type: str | None) -> bool:
    """Whether FastAPI parses a body with this Content-Type as JSON: `application/json` or `application/*+json`
    (its own test, repeated so that exactly the bodies it would parse are parsed here instead)."""
    if not content_type:
        return False  # FastAPI's strict_content_type (the default): no Content-Type, no JSON
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_json_body(body: bytes) -> Any:
    """The body's JSON value, refusing malformed JSON (400 `invalid_json`) and lone surrogates (400 naming the
    field). The slow part of a large body: run in a worker thread by `OffLoopJsonRoute`."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # bad syntax, not UTF-8, or nested past the parser's recursion limit
        raise InvalidRequest(INVALID_JSON_MESSAGE, code="invalid_json") from None
    where = lone_surrogate_path(value) if may_hold_surrogates(body) else None
    if where is not None:
        raise InvalidRequest(
            f"Invalid value for '{where}': the string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
            "escape), which is not valid Unicode.",
            param=where,
            code="invalid_value",
        )
    return value


class _ParsedJsonRequest(Request):
    """The request handed to FastAPI once its body is read and parsed: `body()` and `json()` answer from
    memory, so FastAPI neither reads the stream again nor parses the body a second time on the loop."""

    def __init__(self, request: Request, body: bytes, value: Any):
        super().__init__(request.scope, request.receive)
        self._read_body = body
        self._parsed_json = value

    async def body(self) -> bytes:
        return self._read_body

    async def json(self) -> Any:
        return self._parsed_json


class OffLoopJsonRoute(APIRoute):
    """An `APIRoute` whose JSON body is parsed and checked (`parse_json_body`) before FastAPI sees it: in a
    worker thread when it is larger than INLINE_PARSE_BYTES, so a 16 MiB body cannot stall the event loop
    (and with it `/health` and every other request). The threads are a small pool of their own: parsing
    never takes the threads FastAPI's sync handlers run on.

    Like FastAPI, only routes that declare a body and only JSON content types are parsed; uploads (multipart,
    streamed by their handler) are never touched.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def parse_then_handle(request: Request) -> Response:
            if not is_json_body(request.headers.get("content-type")):
                return await handler(request)
            body = await request.body()
            if not body:
                return await handler(request)
            if len(body) <= INLINE_PARSE_BYTES:
                value = parse_json_body(body)
            else:
                value = await run_in_pool("json-parse", JSON_PARSE_THREADS, parse_json_body, body)
            return await handler(_ParsedJsonRequest(request, body, value))

        return parse_then_handle


INLINE_PARSE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the loop (well under a millisecond); a thread hop would cost more."""
JSON_PARSE_THREADS = 1
"""`json.loads` holds the GIL for a whole body (about 1 s for 16 MiB of small objects on a slow core): with
one large parse at a time, the event loop still gets the GIL between parses and during the surrogate walk."""


def parse_json_off_loop(router: APIRouter) -> None:
    """Make `router`'s routes `OffLoopJsonRoute`s. The resource routers are built at import with FastAPI's
    `APIRoute`; FastAPI builds each route's handler from the route's class when the router is included, so
    switching the class before `include_router` is enough (it adds no state, so the switch is safe, and
    doing it twice changes nothing)."""
    for route in router.routes:
        if type(route) is APIRoute:
            route.__class__ = OffLoopJsonRoute
