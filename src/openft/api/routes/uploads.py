"""`/uploads`: a large file in parts (services/uploads.py): create, add a part (streamed), complete, cancel.

Every dialect answers 200, the Azure dated one too: its 201 + Location is for creates whose object can be
fetched at that location (files, jobs), and an upload has no GET.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from openft.api.deps import PrincipalDep
from openft.api.multipart import read_multipart_upload
from openft.api.routes.common import OpenApiResponses, container
from openft.errors import InvalidRequest, PayloadTooLarge, ServiceUnavailable
from openft.protocol.common import ErrorResponse
from openft.protocol.uploads import Upload, UploadComplete, UploadCreate, UploadPart
from openft.services.uploads import UploadService

router = APIRouter(tags=["uploads"])

_PART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}
_TOO_LARGE: OpenApiResponses = {
    413: {"model": ErrorResponse, "description": "Part larger than 64 MB or than the upload has room for"}
}


def _uploads(request: Request) -> UploadService:
    uploads = container(request).uploads
    if uploads is None:  # only a hand-built container lacks it
        raise ServiceUnavailable("The Uploads API is not available on this server.")
    return uploads


@router.post("/uploads")
def create_upload(request: Request, body: UploadCreate, principal: PrincipalDep) -> Upload:
    return _uploads(request).create(principal.org_id, body, project=principal.project)


@router.post("/uploads/{upload_id}/parts", openapi_extra=_PART_BODY, responses=_TOO_LARGE)
async def add_upload_part(request: Request, principal: PrincipalDep, upload_id: str) -> UploadPart:
    uploads = _uploads(request)
    # checked before the body is read: a part for a finished or unknown upload is refused without receiving it
    slot = await run_in_threadpool(uploads.part_slot, principal.scope, upload_id)
    try:
        form = await read_multipart_upload(
            request, container(request).store, max_bytes=slot.max_bytes, file_field="data"
        )
    except PayloadTooLarge:
        raise slot.too_large() from None
    if form.fields:
        if form.writer is not None:
            form.writer.abort()
        name = sorted(form.fields)[0]
        raise InvalidRequest(f"Unrecognized request argument supplied: {name}", param=name, code="unknown_parameter")
    return await run_in_threadpool(uploads.add_part, principal.scope, upload_id, form.writer)


@router.post("/uploads/{upload_id}/complete")
def complete_upload(request: Request, principal: PrincipalDep, upload_id: str, body: UploadComplete) -> Upload:
    return _uploads(request).complete(principal.scope, upload_id, body)


@router.post("/uploads/{upload_id}/cancel")
def cancel_upload(request: Request, principal: PrincipalDep, upload_id: str) -> Upload:
    return _uploads(request).cancel(principal.scope, upload_id)
