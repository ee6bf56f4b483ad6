"""`POST /chat/completions` (and Azure's `/deployments/{deployment}/chat/completions`): JSON or SSE.

Async on purpose: a request waits for its model, and generates, without holding a thread of the server's
pool (see `openft.services.admission`), so health checks, auth, files and jobs never queue behind chats.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from openft.api.deps import PrincipalDep
from openft.api.routes.common import OpenApiResponses, container
from openft.protocol.chat import ChatCompletion, ChatCompletionRequest, DeploymentChatCompletionRequest
from openft.services.admission import ClientDisconnected
from openft.services.models import Caller

router = APIRouter(tags=["chat"])
RESPONSES: OpenApiResponses = {
    200: {"model": ChatCompletion, "description": "A chat completion, or server-sent chunks when stream=true"}
}
CLIENT_CLOSED_REQUEST = 499
"""Logged when the client left before its answer (nginx's code); nobody receives it."""


class _ClientWatch:
    """Notices the client leaving (ASGI `http.disconnect`) while its request waits for the model or generates.

    `Request.is_disconnected()` cannot tell: it polls with an already-cancelled scope, and behind Starlette's
    BaseHTTPMiddleware such a poll never delivers the message. So a task waits on `receive()`, which after
    the body has been read only ever answers `http.disconnect`.
    """

    def __init__(self, request: Request):
        self._gone = asyncio.Event()
        self._task = asyncio.ensure_future(self._listen(request))

    async def _listen(self, request: Request) -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        self._gone.set()

    async def disconnected(self) -> bool:
        return self._gone.is_set()

    def stop(self) -> None:
        self._task.cancel()


@contextlib.asynccontextmanager
async def client_watch(request: Request) -> AsyncIterator[_ClientWatch]:
    """Watch for the client leaving until the response is handed over (an SSE response watches by itself)."""
    watch = _ClientWatch(request)
    try:
        yield watch
    finally:
        watch.stop()


async def answer(
    request: Request, body: ChatCompletionRequest, who: Caller
) -> ChatCompletion | EventSourceResponse | Response:
    inference = container(request).inference
    try:
        async with client_watch(request) as watch:
            if body.stream:
                payloads = await inference.chat_stream(who, body, watch.disconnected)
                return EventSourceResponse(payloads, ping=15)
            return await inference.chat(who, body, watch.disconnected)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post("/chat/completions", response_model=None, responses=RESPONSES)
async def create_chat_completion(
    request: Request, body: ChatCompletionRequest, principal: PrincipalDep
) -> ChatCompletion | EventSourceResponse | Response:
    return await answer(request, body, Caller.of_principal(principal))


@router.post("/deployments/{deployment}/chat/completions", response_model=None, responses=RESPONSES)
async def create_deployment_chat_completion(
    request: Request, deployment: str, body: DeploymentChatCompletionRequest, principal: PrincipalDep
) -> ChatCompletion | EventSourceResponse | Response:
    """Azure routes by deployment; in openft every model is deployed under its own name."""
    body.model = deployment
    return await answer(request, body, Caller.of_principal(principal))
