"""`/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from openft.api.deps import Dialect, DialectDep, PrincipalDep
from openft.api.routes.common import OpenApiResponses, container, created_status, location
from openft.errors import InvalidRequest
from openft.protocol.common import ErrorResponse, IdListPage, ListPage
from openft.protocol.fine_tuning import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
)

router = APIRouter(tags=["fine-tuning"])
azure_dated_router = APIRouter(tags=["fine-tuning"])
"""Mounted under the Azure dated prefix only (`app.AZURE_DATED_ROUTERS`)."""
MAX_PAGE = 100
"""Largest `limit` for jobs, events and checkpoints (documented in README)."""
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
After = Annotated[str | None, Query(max_length=64)]
STATE_CONFLICT: OpenApiResponses = {
    409: {"model": ErrorResponse, "description": "Not allowed in the job's status (`invalid_job_state`)"}
}


@router.post("/fine_tuning/jobs")
def create_job(
    request: Request, body: FineTuningJobCreate, principal: PrincipalDep, dialect: DialectDep, response: Response
) -> FineTuningJob:
    job = container(request).fine_tuning.create(principal.org_id, body, project=principal.project)
    response.status_code = created_status(dialect)
    if dialect is Dialect.AZURE_DATED:
        response.headers["Location"] = location(request, f"/fine_tuning/jobs/{job.id}")
    return job


def metadata_filter(request: Request) -> dict[str, str] | None:
    """`metadata[key]=value` query pairs, as the SDK serializes a metadata dict."""
    pairs = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            name = key[len("metadata[") : -1]
            if not name or len(name) > 64:
                raise InvalidRequest("metadata filter keys must have 1 to 64 characters.", param="metadata")
            pairs[name] = value
    return pairs or None


@router.get("/fine_tuning/jobs")
def list_jobs(
    request: Request, principal: PrincipalDep, after: After = None, limit: Limit = 20
) -> ListPage[FineTuningJob]:
    """`metadata=null` (OpenAI's documented filter) lists only the jobs created without metadata."""
    without_metadata = request.query_params.get("metadata") == "null"
    return container(request).fine_tuning.list(
        principal.scope,
        after=after,
        limit=limit,
        metadata=metadata_filter(request),
        without_metadata=without_metadata,
    )


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}")
def retrieve_job(request: Request, principal: PrincipalDep, fine_tuning_job_id: str) -> FineTuningJob:
    return container(request).fine_tuning.get(principal.scope, fine_tuning_job_id)


@azure_dated_router.delete(
    "/fine_tuning/jobs/{fine_tuning_job_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "Deleted"}},
)
def delete_job(request: Request, principal: PrincipalDep, fine_tuning_job_id: str) -> Response:
    """Azure's dated API deletes a finished job (204); OpenAI and Azure v1 define no such call (405 there)."""
    services = container(request)
    services.fine_tuning.delete(
        principal.scope,
        fine_tuning_job_id,
        jobs_dir=services.settings.jobs_dir,
        forget_stored=services.files.forget_job_checkpoints,
    )
    return Response(status_code=204)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", responses=STATE_CONFLICT)
def cancel_job(request: Request, principal: PrincipalDep, fine_tuning_job_id: str) -> FineTuningJob:
    return container(request).fine_tuning.cancel(principal.scope, fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", responses=STATE_CONFLICT)
def pause_job(request: Request, principal: PrincipalDep, fine_tuning_job_id: str) -> FineTuningJob:
    return container(request).fine_tuning.pause(principal.scope, fine_tuning_job_id)


@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", responses=STATE_CONFLICT)
def resume_job(request: Request, principal: PrincipalDep, fine_tuning_job_id: str) -> FineTuningJob:
    return container(request).fine_tuning.resume(principal.scope, fine_tuning_job_id)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/events")
@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/events")  # Azure's docs print `curl -X POST` here
def list_events(
    request: Request, principal: PrincipalDep, fine_tuning_job_id: str, after: After = None, limit: Limit = 20
) -> ListPage[FineTuningJobEvent]:
    return container(request).fine_tuning.list_events(principal.scope, fine_tuning_job_id, after=after, limit=limit)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")
@router.post("/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints")  # and here
def list_checkpoints(
    request: Request, principal: PrincipalDep, fine_tuning_job_id: str, after: After = None, limit: Limit = 10
) -> IdListPage[FineTuningJobCheckpoint]:
    return container(request).fine_tuning.list_checkpoints(
        principal.scope, fine_tuning_job_id, after=after, limit=limit
    )
