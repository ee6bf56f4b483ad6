"""`/fine_tuning/alpha/graders/run` and `/validate`: OpenAI's Graders API (services/graders.py).

Async: a score_model grader's judge generates on the model's batch, and a python grader runs in a process of
its own; the grading itself runs in a worker thread, so neither holds the event loop.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from openft.api.deps import PrincipalDep
from openft.api.routes.chat import CLIENT_CLOSED_REQUEST, client_watch
from openft.api.routes.common import OpenApiResponses, container
from openft.errors import ServiceUnavailable
from openft.protocol.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from openft.services.admission import ClientDisconnected
from openft.services.graders import GraderService
from openft.services.models import Caller

router = APIRouter(tags=["graders"])
RUN_RESPONSES: OpenApiResponses = {
    200: {"model": RunGraderResponse, "description": "The sample's reward, and what went wrong while grading"}
}


def _graders(request: Request) -> GraderService:
    graders = container(request).graders
    if graders is None:  # only a hand-built container lacks it
        raise ServiceUnavailable("The Graders API is not available on this server.")
    return graders


@router.post("/fine_tuning/alpha/graders/run", response_model=None, responses=RUN_RESPONSES)
async def run_grader(request: Request, body: RunGraderRequest, principal: PrincipalDep) -> RunGraderResponse | Response:
    service = _graders(request)
    try:
        async with client_watch(request) as watch:
            return await service.run(Caller.of_principal(principal), body, watch.disconnected)
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)


@router.post("/fine_tuning/alpha/graders/validate")
async def validate_grader(
    request: Request, body: ValidateGraderRequest, principal: PrincipalDep
) -> ValidateGraderResponse:
    return await _graders(request).validate(Caller.of_principal(principal), body)
