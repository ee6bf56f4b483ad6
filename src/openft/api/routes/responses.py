"""`/responses`: the Responses API (services/responses.py), served by the chat path; JSON or typed SSE events.

Stored responses are per organization (the key's); another organization's is a 404.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from openft.api.deps import PrincipalDep
from openft.api.routes.chat import CLIENT_CLOSED_REQUEST, client_watch
from openft.api.routes.common import OpenApiResponses, container
from openft.errors import ServiceUnavailable
from openft.protocol.responses import CreateResponseRequest, DeletedResponse, ResponseItemList, ResponseObject
from openft.services.admission import ClientDisconnected
from openft.services.models import Caller
from openft.services.responses import ResponseService

router = APIRouter(tags=["responses"])
RESPONSES: OpenApiResponses = {
    200: {"model": ResponseObject, "description": "A response, or server-sent events when stream=true"}
}


def _responses(request: Request) -> ResponseService:
    responses = container(request).responses
    if responses is None:  # only a hand-built container lacks it
        raise ServiceUnavailable("The Responses API is not available on this server.")
    return responses


@router.post("/responses", response_model=None, responses=RESPONSES)
async def create_response(
    request: Request, body: CreateResponseRequest, principal: PrincipalDep
) -> ResponseObject | EventSourceResponse | Response:
    service = _responses(request)
    who = Caller.of_principal(principal)
    try:
        async with client_watch(request) as watch:
            if body.stream:
                events = await service.create_stream(who, principal.org_id, body, watch.disconnected)
                return EventSourceResponse(events, ping=15)
            return await service.create(who, principal.org_id, body, watch.disconnected)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.get("/responses/{response_id}")
def retrieve_response(request: Request, response_id: str, principal: PrincipalDep) -> ResponseObject:
    return _responses(request).retrieve(principal.org_id, response_id)


@router.delete("/responses/{response_id}")
def delete_response(request: Request, response_id: str, principal: PrincipalDep) -> DeletedResponse:
    return _responses(request).delete(principal.org_id, response_id)


@router.post("/responses/{response_id}/cancel")
def cancel_response(request: Request, response_id: str, principal: PrincipalDep) -> ResponseObject:
    """Only background responses can be cancelled; a cancelled one is returned again."""
    return _responses(request).cancel(principal.org_id, response_id)


@router.get("/responses/{response_id}/input_items")
async def list_response_input_items(
    request: Request,
    response_id: str,
    principal: PrincipalDep,
    limit: int = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> ResponseItemList:
    service = _responses(request)
    return await run_in_threadpool(
        lambda: service.input_items(principal.org_id, response_id, limit=limit, order=order, after=after)
    )
