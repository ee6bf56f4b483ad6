"""`/models`: base models, the caller's fine-tunes and their checkpoints, checkpoints shared with its project and
its organization's aliases; delete a fine-tuned model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from openft.api.deps import Dialect, DialectDep, PrincipalDep
from openft.api.routes.common import container
from openft.protocol.common import DeletedObject
from openft.protocol.models import Model, ModelList
from openft.services.models import Caller

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(request: Request, principal: PrincipalDep, dialect: DialectDep) -> ModelList:
    return container(request).models.list(Caller.of_principal(principal), azure=dialect is Dialect.AZURE_DATED)


@router.get("/models/{model:path}")
def retrieve_model(request: Request, principal: PrincipalDep, dialect: DialectDep, model: str) -> Model:
    return container(request).models.get(Caller.of_principal(principal), model, azure=dialect is Dialect.AZURE_DATED)


@router.delete("/models/{model:path}")
def delete_model(request: Request, principal: PrincipalDep, model: str) -> DeletedObject:
    return container(request).models.delete(Caller.of_principal(principal), model)
