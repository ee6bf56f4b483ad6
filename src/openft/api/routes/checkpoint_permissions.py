"""`/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions`: share a checkpoint with other
organizations' projects (services/checkpoint_permissions.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from openft.api.deps import PrincipalDep
from openft.api.routes.common import container
from openft.protocol.checkpoint_permissions import (
    CheckpointPermissionCreate,
    CheckpointPermissionDeleted,
    CheckpointPermissionList,
)

router = APIRouter(tags=["fine-tuning"])
PATH = "/fine_tuning/checkpoints/{fine_tuned_model_checkpoint:path}/permissions"
"""`:path` because a checkpoint's name (`ft:base:org:suffix:id:ckpt-step-N`) may hold `/` (a hub base's id)."""


@router.post(PATH)
def create_checkpoint_permission(
    request: Request, principal: PrincipalDep, fine_tuned_model_checkpoint: str, body: CheckpointPermissionCreate
) -> CheckpointPermissionList:
    return container(request).checkpoint_permissions.create(principal.scope, fine_tuned_model_checkpoint, body)


@router.get(PATH)
def list_checkpoint_permissions(
    request: Request,
    principal: PrincipalDep,
    fine_tuned_model_checkpoint: str,
    project_id: Annotated[str | None, Query(max_length=160)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    order: Literal["ascending", "descending"] = "descending",
) -> CheckpointPermissionList:
    return container(request).checkpoint_permissions.list(
        principal.scope,
        fine_tuned_model_checkpoint,
        project_id=project_id,
        after=after,
        limit=limit,
        ascending=order == "ascending",
    )


@router.delete(PATH + "/{permission_id}")
def delete_checkpoint_permission(
    request: Request, principal: PrincipalDep, fine_tuned_model_checkpoint: str, permission_id: str
) -> CheckpointPermissionDeleted:
    return container(request).checkpoint_permissions.delete(principal.scope, fine_tuned_model_checkpoint, permission_id)
