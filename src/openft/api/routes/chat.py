"""`POST /chat/completions` (and Azure's `/deployments/{deployment}/chat/completions`)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.protocol.chat import ChatCompletion, ChatCompletionRequest

router = APIRouter(tags=["chat"])


@router.post("/chat/completions")
def create_chat_completion(request: Request, body: ChatCompletionRequest, principal: PrincipalDep) -> ChatCompletion:
    return container(request).inference.chat(principal.org_id, body)


@router.post("/deployments/{deployment}/chat/completions")
def create_deployment_chat_completion(
    request: Request, deployment: str, body: ChatCompletionRequest, principal: PrincipalDep
) -> ChatCompletion:
    """Azure routes by deployment; in openft a deployment name is a model name (every model is deployed)."""
    body.model = deployment
    return container(request).inference.chat(principal.org_id, body)
