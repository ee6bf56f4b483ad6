"""`POST /chat/completions` (and Azure's `/deployments/{deployment}/chat/completions`): JSON or SSE."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.protocol.chat import ChatCompletion, ChatCompletionRequest

router = APIRouter(tags=["chat"])
RESPONSES = {200: {"model": ChatCompletion, "description": "A chat completion, or server-sent chunks when stream=true"}}


def answer(request: Request, body: ChatCompletionRequest, org_id: str | None) -> ChatCompletion | EventSourceResponse:
    inference = container(request).inference
    if body.stream:
        return EventSourceResponse(inference.chat_stream(org_id, body), ping=15)
    return inference.chat(org_id, body)


@router.post("/chat/completions", response_model=None, responses=RESPONSES)
def create_chat_completion(
    request: Request, body: ChatCompletionRequest, principal: PrincipalDep
) -> ChatCompletion | EventSourceResponse:
    return answer(request, body, principal.scope)


@router.post("/deployments/{deployment}/chat/completions", response_model=None, responses=RESPONSES)
def create_deployment_chat_completion(
    request: Request, deployment: str, body: ChatCompletionRequest, principal: PrincipalDep
) -> ChatCompletion | EventSourceResponse:
    """Azure routes by deployment; in openft every model is deployed under its own name."""
    body.model = deployment
    return answer(request, body, principal.scope)
