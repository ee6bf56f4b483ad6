"""Wire objects of the Uploads API (OpenAI `Upload`, `UploadPart`, `CreateUploadRequest`, `CompleteUploadRequest`).

Requests are strict (`extra="forbid"`), like every management request. Sizes and names are checked by the
service (services/uploads.py), which knows the configured limits; here only the shapes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictInt, StrictStr

from openft.protocol.common import StrictModel
from openft.protocol.files import EXPIRES_MAX_SECONDS, EXPIRES_MIN_SECONDS, FileObject

UploadStatus = Literal["pending", "completed", "cancelled", "expired"]
MAX_PART_IDS = 10_000
"""Parts one completion may name: 8 GiB in 64 MiB parts is 128; this bounds a request at ~640 KB of ids."""


class FileExpiresAfter(StrictModel):
    """The File's expiry once the upload completes (OpenAI `FileExpirationAfter`), as `POST /files` takes it."""

    anchor: Literal["created_at"]
    seconds: Annotated[StrictInt, Field(ge=EXPIRES_MIN_SECONDS, le=EXPIRES_MAX_SECONDS)]


class UploadCreate(StrictModel):
    bytes: StrictInt
    filename: Annotated[StrictStr, Field(max_length=4096)]
    purpose: Annotated[StrictStr, Field(max_length=64)]
    mime_type: Annotated[StrictStr, Field(max_length=255)]
    expires_after: FileExpiresAfter | None = None


class UploadComplete(StrictModel):
    part_ids: Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=MAX_PART_IDS)]
    md5: Annotated[StrictStr, Field(max_length=64)] | None = None


class Upload(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: UploadStatus
    expires_at: int
    file: FileObject | None = Field(default=None, description="The File made from the parts, once completed.")


class UploadPart(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str
