"""`/batches`: the Batch API (services/batches.py); the batches are answered by the workers (jobs/batches.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.errors import ServiceUnavailable
from openft.protocol.batches import Batch, CreateBatchRequest, ListBatchesResponse
from openft.services.batches import BatchService

router = APIRouter(tags=["batches"])


def _batches(request: Request) -> BatchService:
    batches = container(request).batches
    if batches is None:  # only a hand-built container lacks it
        raise ServiceUnavailable("The Batch API is not available on this server.")
    return batches


@router.post("/batches")
async def create_batch(request: Request, body: CreateBatchRequest, principal: PrincipalDep) -> Batch:
    service = _batches(request)
    return await run_in_threadpool(service.create, principal.org_id, body)


@router.get("/batches/{batch_id}")
def retrieve_batch(request: Request, batch_id: str, principal: PrincipalDep) -> Batch:
    return _batches(request).retrieve(principal.org_id, batch_id)


@router.get("/batches")
def list_batches(
    request: Request, principal: PrincipalDep, after: str | None = None, limit: int = 20
) -> ListBatchesResponse:
    return _batches(request).list(principal.org_id, after=after, limit=limit)


@router.post("/batches/{batch_id}/cancel")
def cancel_batch(request: Request, batch_id: str, principal: PrincipalDep) -> Batch:
    return _batches(request).cancel(principal.org_id, batch_id)
