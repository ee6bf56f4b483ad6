"""The API key is checked first, from the headers alone, before any byte of the body is read.

FastAPI reads and parses a request's JSON body before it runs any dependency, so with the key checked in a
dependency, anyone could make the server buffer and parse 16 MiB per request without a key. `AuthGate` is an
ASGI middleware in front of everything else on the resource prefixes (`/v1`, `/openai/v1`, `/openai`): a
request without a valid key is answered 401 (429 when its address sent too many wrong keys, see
`services.throttle`) at once, and its body is never read. `/health`, the dashboard (`/`, `/dashboard/...`),
`/openapi.json` stay open.

The key lookup (a SHA-256 and an indexed database read) runs in a worker thread under its own small
`CapacityLimiter`: it never blocks the event loop, and it never waits behind the handlers that fill FastAPI's
default thread pool (40 threads), so authentication stays quick while the server is busy. Every lookup reads
the database, so a revoked key is refused on its next request.

The principal found is stored in the request's state; `deps.get_principal` reads it from there.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from openft.api.errors import error_response
from openft.api.threads import run_in_pool
from openft.errors import OpenFTError, RateLimited, Unauthorized
from openft.services.auth import Authenticator, Principal, RateLimiter
from openft.services.throttle import FailedKeyThrottle

PRINCIPAL_STATE_KEY = "principal"
"""Where the gate leaves the caller's `Principal` in `scope["state"]` (that is, `request.state.principal`)."""
KEY_CHECK_THREADS = 4
"""Key lookups at once: each is one indexed read, so a few threads keep up with any request rate a single
process serves, and stay well under the database connection pool."""
MISSING_KEY_MESSAGE = "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or in an 'api-key' header."
WRONG_KEY_MESSAGE = "Incorrect API key provided."


def key_from_headers(headers: dict[str, str]) -> str | None:
    """`Authorization: Bearer KEY` (OpenAI, Azure v1) or `api-key: KEY` (Azure); header names lower-case."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    api_key = headers.get("api-key")
    return api_key.strip() if api_key and api_key.strip() else None


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-case names; the first of repeated headers wins, as in Starlette's `request.headers[...]`."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _has_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    return headers.get(b"content-length", b"0").strip() not in (b"", b"0") or b"transfer-encoding" in headers


def _client(scope: Scope) -> str:
    """The peer address (uvicorn sets it from `X-Forwarded-For` only for its `FORWARDED_ALLOW_IPS`)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


async def authenticate_key(
    key: str | None,
    authenticator: Authenticator,
    rate_limiter: RateLimiter,
    throttle: FailedKeyThrottle,
    client: str,
) -> Principal:
    """The caller's principal, or the domain error (401 `invalid_api_key`, 429 `rate_limit_exceeded`) to answer."""
    if key is None:
        raise Unauthorized(MISSING_KEY_MESSAGE)
    principal = await run_in_pool("key-check", KEY_CHECK_THREADS, authenticator.authenticate, key)
    if principal is None:
        wait = throttle.retry_after(client)
        if wait is not None:
            raise RateLimited(
                f"Too many requests with a wrong API key from your address; try again in {wait:.0f}s.",
                retry_after=wait,
            )
        throttle.record_failure(client)
        raise Unauthorized(WRONG_KEY_MESSAGE)
    rate_limiter.admit(principal)  # 429 rate_limit_exceeded with Retry-After for a key with a limit
    return principal


def needs_key(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in prefixes)


class AuthGate:
    """ASGI middleware: authenticate requests to `prefixes` from their headers, refuse the others unread."""

    def __init__(self, app: ASGIApp, *, prefixes: tuple[str, ...], throttle: FailedKeyThrottle):
        self.app = app
        self.prefixes = prefixes
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not needs_key(str(scope["path"]), self.prefixes):
            await self.app(scope, receive, send)
            return
        container: Any = scope["app"].state.container
        try:
            principal = await authenticate_key(
                key_from_headers(_headers(scope)),
                container.authenticator,
                container.rate_limiter,
                self.throttle,
                _client(scope),
            )
        except OpenFTError as exc:
            response = error_response(exc)
            if _has_body(scope):
                # Answered without reading the body: the connection is closed after the answer, so the client
                # cannot push the rest of it (and the server need not read it to reach a next request).
                response.headers["connection"] = "close"
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[PRINCIPAL_STATE_KEY] = principal
        await self.app(scope, receive, send)
