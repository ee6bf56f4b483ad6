"""`POST /completions` (legacy prompt → text), and Azure's deployment-scoped form: JSON or SSE."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.protocol.completions import Completion, CompletionRequest

router = APIRouter(tags=["completions"])
RESPONSES = {200: {"model": Completion, "description": "A completion, or server-sent chunks when stream=true"}}


def answer(request: Request, body: CompletionRequest, org_id: str | None) -> Completion | EventSourceResponse:
    inference = container(request).inference
    if body.stream:
        return EventSourceResponse(inference.complete_stream(org_id, body), ping=15)
    return inference.complete(org_id, body)


@router.post("/completions", response_model=None, responses=RESPONSES)
def create_completion(
    request: Request, body: CompletionRequest, principal: PrincipalDep
) -> Completion | EventSourceResponse:
    return answer(request, body, principal.scope)


@router.post("/deployments/{deployment}/completions", response_model=None, responses=RESPONSES)
def create_deployment_completion(
    request: Request, deployment: str, body: CompletionRequest, principal: PrincipalDep
) -> Completion | EventSourceResponse:
    body.model = deployment
    return answer(request, body, principal.scope)
