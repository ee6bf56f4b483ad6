"""`POST /completions` (legacy prompt → text), and Azure's deployment-scoped form: JSON or SSE.

Async for the same reason as the chat routes (see `routes/chat.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from openft.api.deps import PrincipalDep
from openft.api.routes.chat import CLIENT_CLOSED_REQUEST, client_watch
from openft.api.routes.common import OpenApiResponses, container
from openft.protocol.completions import Completion, CompletionRequest, DeploymentCompletionRequest
from openft.services.admission import ClientDisconnected
from openft.services.models import Caller

router = APIRouter(tags=["completions"])
RESPONSES: OpenApiResponses = {
    200: {"model": Completion, "description": "A completion, or server-sent chunks when stream=true"}
}


async def answer(request: Request, body: CompletionRequest, who: Caller) -> Completion | EventSourceResponse | Response:
    inference = container(request).inference
    try:
        async with client_watch(request) as watch:
            if body.stream:
                payloads = await inference.complete_stream(who, body, watch.disconnected)
                return EventSourceResponse(payloads, ping=15)
            return await inference.complete(who, body, watch.disconnected)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post("/completions", response_model=None, responses=RESPONSES)
async def create_completion(
    request: Request, body: CompletionRequest, principal: PrincipalDep
) -> Completion | EventSourceResponse | Response:
    return await answer(request, body, Caller.of_principal(principal))


@router.post("/deployments/{deployment}/completions", response_model=None, responses=RESPONSES)
async def create_deployment_completion(
    request: Request, deployment: str, body: DeploymentCompletionRequest, principal: PrincipalDep
) -> Completion | EventSourceResponse | Response:
    body.model = deployment
    return await answer(request, body, Caller.of_principal(principal))
