"""`/models`: base models, the caller's fine-tunes and their checkpoints; delete a fine-tuned model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from openft.api.deps import Dialect, DialectDep, PrincipalDep
from openft.api.routes.common import container
from openft.protocol.common import DeletedObject
from openft.protocol.models import Model, ModelList

router = APIRouter(tags=["models"])


@router.get("/models")
def list_models(request: Request, principal: PrincipalDep, dialect: DialectDep) -> ModelList:
    return container(request).models.list(principal.scope, azure=dialect is Dialect.AZURE_DATED)


@router.get("/models/{model:path}")
def retrieve_model(request: Request, principal: PrincipalDep, dialect: DialectDep, model: str) -> Model:
    return container(request).models.get(principal.scope, model, azure=dialect is Dialect.AZURE_DATED)


@router.delete("/models/{model:path}")
def delete_model(request: Request, principal: PrincipalDep, model: str) -> DeletedObject:
    return container(request).models.delete(principal.scope, model)
