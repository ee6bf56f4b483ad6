"""Legacy completions wire objects (OpenAI `CreateCompletionRequest` / `CreateCompletionResponse`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from openft.protocol.chat import MAX_N, CompletionUsage, SamplingRequest

MAX_LEGACY_LOGPROBS = 5
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for legacy completions (a chat reply's is `openft.inference.CHAT_DEFAULT_MAX_TOKENS`)."""


TokenIds = Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)]
"""A prompt given as token ids (what litellm and the SDK's `Iterable[int]` send); each id is checked against the
model's vocabulary when the prompt is tokenized (a 400 naming `prompt`)."""
MAX_PROMPTS = 16


class CompletionRequest(SamplingRequest):
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LEGACY_LOGPROBS)] | None = None
    echo: StrictBool | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None


class DeploymentCompletionRequest(CompletionRequest):
    """Azure's deployment-scoped call (`/deployments/{deployment}/completions`): the path names the model, so
    the body may leave `model` out; the route fills it in from the path."""

    model: Annotated[str, Field(max_length=600)] = ""


class LegacyLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"] | None
    logprobs: LegacyLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None = None
    system_fingerprint: str | None = None
