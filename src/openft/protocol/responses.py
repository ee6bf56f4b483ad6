"""Responses API wire objects (OpenAI `CreateResponse`, `Response`, `ResponseItemList`).

The request is lenient like chat's (`extra="allow"`): the SDKs add fields over time. Its items (`input`,
`tools`, `tool_choice`, `text`) are kept as plain JSON here and read by services/responses.py, which turns
them into a chat request and answers a 400 naming the exact item (`input[2].type`, `tools[0].type`) when one
is of a kind openft does not serve.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, StrictBool, StrictInt, model_serializer

from openft.protocol.chat import MAX_TOKENS
from openft.protocol.common import LenientModel


class CreateResponseRequest(LenientModel):
    model: Annotated[str, Field(min_length=1, max_length=600)]
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    max_output_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: StrictBool | None = None
    previous_response_id: str | None = None
    stream: StrictBool | None = None
    background: StrictBool | None = None
    user: str | None = None


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = InputTokensDetails()
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """OpenAI's `Response`. Output items are plain JSON (`message` and `function_call` items, built by the
    service) so that a stored response is returned byte for byte as it was first answered."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
    background: bool = False
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[dict[str, Any]]
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's schema types `user` and `usage` as a string and an object when present; a response
        without them (no user given; still in progress) omits them."""
        data: dict[str, Any] = handler(self)
        for key in ("user", "usage"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def output_text(self) -> str:
        """All `output_text` parts joined, as the SDK's `Response.output_text` reads them."""
        return "".join(
            part.get("text", "")
            for item in self.output
            if item.get("type") == "message"
            for part in item.get("content", [])
            if part.get("type") == "output_text"
        )


class ResponseItemList(BaseModel):
    """`GET /responses/{id}/input_items`: one page of the items the response was given."""

    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True
