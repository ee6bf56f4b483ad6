"""Checkpoint permissions (OpenAI `checkpoint.permission`): share a checkpoint with other organizations'
projects. A project id is `<organization name>/<project>`: openft's projects are names on API keys, unique only
within their organization (docs/api-compatibility.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from openft.protocol.common import StrictModel

MAX_PROJECTS_PER_REQUEST = 100
ProjectId = Annotated[str, StringConstraints(min_length=3, max_length=160, pattern=r"^[^/\s]{1,64}/[^/\s]{1,64}$")]


class CheckpointPermissionCreate(StrictModel):
    project_ids: Annotated[list[ProjectId], Field(min_length=1, max_length=MAX_PROJECTS_PER_REQUEST)]


class CheckpointPermission(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    created_at: int
    project_id: str


class CheckpointPermissionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPermission]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class CheckpointPermissionDeleted(BaseModel):
    id: str
    object: Literal["checkpoint.permission"] = "checkpoint.permission"
    deleted: bool = True
