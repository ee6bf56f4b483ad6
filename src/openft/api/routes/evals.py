"""`/evals`: OpenAI's Evals API (services/evals.py); runs are carried out by the workers (jobs/eval_runs.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.errors import ServiceUnavailable
from openft.protocol.evals import (
    CreateEvalRequest,
    CreateEvalRunRequest,
    DeleteEvalResponse,
    DeleteEvalRunResponse,
    Eval,
    EvalList,
    EvalRun,
    EvalRunList,
    EvalRunOutputItem,
    EvalRunOutputItemList,
    UpdateEvalRequest,
)
from openft.services.evals import EvalService
from openft.services.models import Caller

router = APIRouter(tags=["evals"])


def _evals(request: Request) -> EvalService:
    evals = container(request).evals
    if evals is None:  # only a hand-built container lacks it
        raise ServiceUnavailable("The Evals API is not available on this server.")
    return evals


@router.post("/evals")
def create_eval(request: Request, body: CreateEvalRequest, principal: PrincipalDep) -> Eval:
    return _evals(request).create(Caller.of_principal(principal), principal.org_id, body)


@router.get("/evals")
def list_evals(
    request: Request,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
    order_by: str = "created_at",
) -> EvalList:
    return _evals(request).list(principal.org_id, after=after, limit=limit, order=order, order_by=order_by)


@router.get("/evals/{eval_id}")
def retrieve_eval(request: Request, eval_id: str, principal: PrincipalDep) -> Eval:
    return _evals(request).retrieve(principal.org_id, eval_id)


@router.post("/evals/{eval_id}")
def update_eval(request: Request, eval_id: str, body: UpdateEvalRequest, principal: PrincipalDep) -> Eval:
    return _evals(request).update(principal.org_id, eval_id, body)


@router.delete("/evals/{eval_id}")
def delete_eval(request: Request, eval_id: str, principal: PrincipalDep) -> DeleteEvalResponse:
    return _evals(request).delete(principal.org_id, eval_id)


@router.post("/evals/{eval_id}/runs")
async def create_eval_run(
    request: Request, eval_id: str, body: CreateEvalRunRequest, principal: PrincipalDep
) -> EvalRun:
    service = _evals(request)  # reading a file_id source and checking its items is work: off the event loop
    return await run_in_threadpool(
        service.create_run,
        Caller.of_principal(principal),
        principal.org_id,
        eval_id,
        body,
        base_url=str(request.base_url),
    )


@router.get("/evals/{eval_id}/runs")
def list_eval_runs(
    request: Request,
    eval_id: str,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
    status: str | None = None,
) -> EvalRunList:
    return _evals(request).list_runs(principal.org_id, eval_id, after=after, limit=limit, order=order, status=status)


@router.get("/evals/{eval_id}/runs/{run_id}")
def retrieve_eval_run(request: Request, eval_id: str, run_id: str, principal: PrincipalDep) -> EvalRun:
    return _evals(request).retrieve_run(principal.org_id, eval_id, run_id)


@router.post("/evals/{eval_id}/runs/{run_id}")
@router.post("/evals/{eval_id}/runs/{run_id}/cancel")  # where the official SDK posts (the OpenAPI document: above)
def cancel_eval_run(request: Request, eval_id: str, run_id: str, principal: PrincipalDep) -> EvalRun:
    return _evals(request).cancel_run(principal.org_id, eval_id, run_id)


@router.delete("/evals/{eval_id}/runs/{run_id}")
def delete_eval_run(request: Request, eval_id: str, run_id: str, principal: PrincipalDep) -> DeleteEvalRunResponse:
    return _evals(request).delete_run(principal.org_id, eval_id, run_id)


@router.get("/evals/{eval_id}/runs/{run_id}/output_items")
def list_output_items(
    request: Request,
    eval_id: str,
    run_id: str,
    principal: PrincipalDep,
    after: str | None = None,
    limit: int = 20,
    order: str = "asc",
    status: str | None = None,
) -> EvalRunOutputItemList:
    return _evals(request).list_items(
        principal.org_id, eval_id, run_id, after=after, limit=limit, order=order, status=status
    )


@router.get("/evals/{eval_id}/runs/{run_id}/output_items/{output_item_id}")
def retrieve_output_item(
    request: Request, eval_id: str, run_id: str, output_item_id: str, principal: PrincipalDep
) -> EvalRunOutputItem:
    return _evals(request).retrieve_item(principal.org_id, eval_id, run_id, output_item_id)
