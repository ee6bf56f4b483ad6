"""`/files/{file_id}/check` (openft's extension): the file as training data, as `openft data check --json` reports it.

One of the app's resource routers (`app.RESOURCE_ROUTERS`), so it is served on all three URL dialects.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.protocol.data_check import DataCheckReport

router = APIRouter(tags=["files"])


@router.get("/files/{file_id}/check")
def check_file(
    request: Request,
    principal: PrincipalDep,
    file_id: str,
    model: Annotated[
        str | None,
        Query(max_length=256, description="A base model; default: the models dir's first, else the built-in one."),
    ] = None,
    method: Annotated[
        Literal["supervised", "dpo"] | None, Query(description="Default: detected from the first valid line.")
    ] = None,
) -> DataCheckReport:
    """Validate an uploaded file as fine-tuning data: problems by line, token statistics on the model's
    tokenizer, the "auto" hyperparameters, steps and an estimated training time (throughput table)."""
    report = container(request).data_check.check(principal.scope, file_id, model=model, method=method)
    return DataCheckReport.model_validate(report)
