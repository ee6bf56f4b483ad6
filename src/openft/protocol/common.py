"""Shared wire shapes: the error envelope and list pages."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class StrictModel(BaseModel):
    """Management requests: an unknown or misspelled field is a 400 naming it, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class LenientModel(BaseModel):
    """Inference requests: the SDKs add fields over time, so unknown ones are accepted and ignored."""

    model_config = ConfigDict(extra="allow")


class ErrorBody(BaseModel):
    """Every error the server sends has all four keys (`param` and `code` may be null): the SDKs read them."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ListPage(BaseModel, Generic[T]):
    """`{object: "list", data, has_more}` — what fine-tuning jobs and events lists return."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


class IdListPage(ListPage[T], Generic[T]):
    """A list page that also names its first and last ids (files, checkpoints)."""

    first_id: str | None = None
    last_id: str | None = None


class FileListPage(ListPage[T], Generic[T]):
    """OpenAI's `ListFilesResponse`: `first_id` and `last_id` are required strings, so an empty page sends ""
    (there is no id to name) rather than null, which typed clients reject."""

    first_id: str
    last_id: str


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool = True
