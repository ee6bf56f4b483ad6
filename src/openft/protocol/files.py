"""The `file` object (OpenAI `OpenAIFile`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data", "evals")
"""Purposes a client may upload with. `fine-tune-results` is written by openft only."""
RESULT_PURPOSE = "fine-tune-results"
EXPIRES_MIN_SECONDS = 3600
EXPIRES_MAX_SECONDS = 2_592_000


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = Field(default=None, description="Unix seconds when the file expires; null: never.")
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"] = "processed"
    status_details: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_optionals(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's schema types `expires_at` and `status_details` as non-null and optional: omit, not null."""
        data = handler(self)
        for name in ("expires_at", "status_details"):
            if data.get(name) is None:
                data.pop(name, None)
        return data
