"""`/files/{file_id}/check` (openft's extension): the file as training data, as `openft data check --json` reports it.

One of the app's resource routers (`app.RESOURCE_ROUTERS`), so it is served on all three URL dialects.

The check (parsing, the chat template, tokenization) runs in a worker thread, never on the event loop,
and under the service's time and size budget. Checks run one at a time; those waiting for their turn wait
on the event loop (holding no thread of the pool the other routes need), at most `MAX_WAITING_CHECKS` of
them: beyond, a check is answered 429 with `Retry-After`.
"""

from __future__ import annotations

import functools
from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.errors import RateLimited
from openft.protocol.data_check import DataCheckReport
from openft.services.models import Caller
from openft.trainer_contract import TrainingMethod
from openft.training.memory_plan import Mode

router = APIRouter(tags=["files"])
MAX_WAITING_CHECKS = 8


def _limiter(request: Request) -> anyio.CapacityLimiter:
    """One check thread per app (created on the app's own event loop, on first use)."""
    state = request.app.state
    limiter = getattr(state, "data_check_limiter", None)
    if limiter is None:
        limiter = state.data_check_limiter = anyio.CapacityLimiter(1)
    return limiter


@router.get("/files/{file_id}/check")
async def check_file(
    request: Request,
    principal: PrincipalDep,
    file_id: str,
    model: Annotated[
        str | None,
        Query(max_length=256, description="A base model; default: the models dir's first, else the built-in one."),
    ] = None,
    method: Annotated[TrainingMethod | None, Query(description="Default: detected from the first valid line.")] = None,
    fine_tuning_mode: Annotated[
        Mode, Query(description="The job's fine_tuning_mode the memory estimate (`memory`) is for.")
    ] = "lora",
) -> DataCheckReport:
    """Validate an uploaded file as fine-tuning data: problems by line, token statistics on the model's
    tokenizer, the "auto" hyperparameters, steps, an estimated training time (throughput table) and the memory
    a job would need, with the devices it fits.
    A check that runs past its budget reports `truncated: true` and covers the part it checked."""
    service = container(request).data_check
    limiter = _limiter(request)
    if limiter.statistics().tasks_waiting >= MAX_WAITING_CHECKS:
        raise RateLimited(
            "Too many data checks are waiting; try again shortly.", retry_after=service.budget.seconds or 30
        )
    check = functools.partial(
        service.check,
        Caller.of_principal(principal),
        file_id,
        model=model,
        method=method,
        fine_tuning_mode=fine_tuning_mode,
    )
    report = await anyio.to_thread.run_sync(check, limiter=limiter)
    return DataCheckReport.model_validate(report)
