"""The `model` object (OpenAI `Model`), with Azure's dated-API fields when that dialect asks.

Azure's dated API describes models with `created_at`, `status`, `model` (the base), `fine_tune` (the
job), `capabilities` and `lifecycle_status`; those fields are added on `/openai/models?api-version=…`
only, so OpenAI clients see exactly OpenAI's shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # Azure dated fields and `alias_for` ride along when present

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def azure_fields(model: Model, *, base: str | None, job_id: str | None) -> dict[str, Any]:
    """Azure dated `Model` fields (docs/api-compatibility.md §2) for a base model, fine-tune or checkpoint."""
    return {
        "created_at": model.created,
        "status": "succeeded",
        "model": base,
        "fine_tune": job_id,
        "capabilities": {
            "fine_tune": True,
            "inference": True,
            "completion": True,
            "chat_completion": True,
            "embeddings": False,
        },
        "lifecycle_status": "generally-available",
        "deprecation": {},
    }


def alias_fields(target: str) -> dict[str, Any]:
    """openft's extension on an alias (docs/api-compatibility.md): the real model name it stands for."""
    return {"alias_for": target}
