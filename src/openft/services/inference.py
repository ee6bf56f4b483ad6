"""Chat with a base model, a fine-tuned model or a checkpoint, by name.

Names resolve to folders here (the database knows which job made which model); the inference
engine only ever sees folders. A model of another organization, a deleted or unfinished one, and a
name nobody made all answer the same 404 `model_not_found`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import ModelCatalog
from openft.db import repositories as repo
from openft.errors import InvalidRequest, ModelNotFound
from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.jobs.states import JobStatus
from openft.protocol.chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    CompletionUsage,
)


def weights_target(base_path: Path, weights: Path) -> ModelTarget:
    """A PEFT adapter folder rides on the base; a full model folder replaces it."""
    if (weights / "adapter_config.json").exists():
        return ModelTarget(base_path=base_path, adapter_path=weights)
    return ModelTarget(base_path=base_path, full_model_path=weights)


class InferenceService:
    def __init__(self, sessions: sessionmaker[Session], catalog: ModelCatalog, engine: InferenceEngine):
        self._sessions = sessions
        self._catalog = catalog
        self._engine = engine

    def resolve(self, org_id: str, model: str) -> ModelTarget:
        info = self._catalog.get(model)
        if info is not None:
            return ModelTarget(base_path=self._catalog.materialize(info))
        with self._sessions.begin() as session:
            weights: Path | None = None
            base_name: str | None = None
            job = repo.find_job_by_model_name(session, model)
            if (
                job is not None
                and job.organization_id == org_id
                and job.status == JobStatus.SUCCEEDED
                and job.model_path
            ):
                weights, base_name = Path(job.model_path), job.model
            checkpoint = None if weights else repo.find_checkpoint_by_model_name(session, model)
            if checkpoint is not None:
                owner = repo.get_job(session, org_id, checkpoint.job_id)
                if owner is not None:
                    folder = Path(checkpoint.path)
                    weights = next((folder / sub for sub in ("adapter", "model") if (folder / sub).is_dir()), None)
                    base_name = owner.model
        base = self._catalog.get(base_name) if base_name else None
        if weights is None or base is None or not weights.is_dir():
            raise ModelNotFound(f"The model '{model}' does not exist or you do not have access to it.", param="model")
        return weights_target(self._catalog.materialize(base), weights)

    def chat(self, org_id: str, request: ChatCompletionRequest) -> ChatCompletion:
        if request.stream:
            raise InvalidRequest("Streaming is not supported yet; send stream=false.", param="stream")
        target = self.resolve(org_id, request.model)
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        params = GenerationParams(
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            n=request.n or 1,
            stop=stop or None,
            seed=request.seed,
        )
        messages = [
            m.model_dump(exclude_none=True, include={"role", "content", "name", "tool_calls", "tool_call_id"})
            for m in request.messages
        ]
        result = self._engine.chat(target, messages, params, tools=request.tools)
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=[
                ChatCompletionChoice(
                    index=i, message=ChatCompletionMessage(content=choice.text), finish_reason=choice.finish_reason
                )
                for i, choice in enumerate(result.choices)
            ],
            usage=CompletionUsage(
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                total_tokens=result.prompt_tokens + result.completion_tokens,
            ),
        )
