"""Legacy completions wire objects (OpenAI `CreateCompletionRequest` / `CreateCompletionResponse`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StrictBool, StrictInt

from openft.protocol.chat import MAX_N, CompletionUsage, SamplingRequest

MAX_LEGACY_LOGPROBS = 5
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""OpenAI's default for legacy completions (a chat reply's is `openft.inference.CHAT_DEFAULT_MAX_TOKENS`)."""


class CompletionRequest(SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=16)]
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_LEGACY_LOGPROBS)] | None = None
    echo: StrictBool | None = None
    best_of: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    suffix: str | None = None


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
