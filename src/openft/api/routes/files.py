"""`/files`: upload (streamed to disk), list, retrieve, content (streamed), delete."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from openft.api.deps import Dialect, DialectDep, PrincipalDep
from openft.api.multipart import read_multipart_upload
from openft.api.routes.common import OpenApiResponses, container, created_status, location
from openft.protocol.common import DeletedObject, ErrorResponse, FileListPage
from openft.protocol.files import UPLOAD_PURPOSES, FileObject
from openft.services.files import MAX_LIST_LIMIT

router = APIRouter(tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(UPLOAD_PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer", "minimum": 3600, "maximum": 2592000},
                    },
                }
            }
        },
    }
}
_TOO_LARGE: OpenApiResponses = {413: {"model": ErrorResponse, "description": "File too large (`file_too_large`)"}}


@router.post("/files", openapi_extra=_UPLOAD_BODY, responses=_TOO_LARGE)
async def upload_file(request: Request, principal: PrincipalDep, dialect: DialectDep, response: Response) -> FileObject:
    services = container(request)
    upload = await read_multipart_upload(request, services.store, max_bytes=services.settings.max_upload_bytes)
    fields = upload.fields
    created = await run_in_threadpool(
        services.files.create,
        principal.org_id,
        project=principal.project,
        purpose=fields.get("purpose"),
        filename=upload.filename,
        writer=upload.writer,
        expires_after_anchor=fields.get("expires_after[anchor]", fields.get("expires_after.anchor")),
        expires_after_seconds=fields.get("expires_after[seconds]", fields.get("expires_after.seconds")),
    )
    response.status_code = created_status(dialect)
    if dialect is Dialect.AZURE_DATED:
        response.headers["Location"] = location(request, f"/files/{created.id}")
    return created


@router.get("/files")
def list_files(
    request: Request,
    principal: PrincipalDep,
    purpose: str | None = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
    order: Literal["asc", "desc"] = "desc",
) -> FileListPage[FileObject]:
    page = container(request).files.list(principal.scope, purpose=purpose, after=after, limit=limit, order=order)
    return FileListPage[FileObject](
        data=page.data, has_more=page.has_more, first_id=page.first_id or "", last_id=page.last_id or ""
    )


@router.get("/files/{file_id}")
def retrieve_file(request: Request, principal: PrincipalDep, file_id: str) -> FileObject:
    return container(request).files.get(principal.scope, file_id)


@router.get("/files/{file_id}/content", response_class=StreamingResponse)
def file_content(request: Request, principal: PrincipalDep, file_id: str) -> StreamingResponse:
    content = container(request).files.content(principal.scope, file_id)
    return StreamingResponse(
        content.chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(content.size),
            "Content-Disposition": f"attachment; filename*=UTF-8''{_quote(content.filename)}",
        },
    )


@router.delete("/files/{file_id}")
def delete_file(request: Request, principal: PrincipalDep, file_id: str) -> DeletedObject:
    return container(request).files.delete(principal.scope, file_id)


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")
