"""Chat completions wire objects (OpenAI `CreateChatCompletionRequest`, `CreateChatCompletionResponse`,
`CreateChatCompletionStreamResponse`).

Requests are lenient (`extra="allow"`): the SDKs send new fields over time, and an unknown field must not
break a call. Known fields are still checked, and a bad value is a 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictInt,
    field_validator,
    model_serializer,
    model_validator,
)

from openft.protocol.common import LenientModel

MAX_N = 8
MAX_STOP = 4
"""OpenAI's limit on the number of stop strings."""
MAX_STOP_CHARS = 256
"""Longest stop string (characters). OpenAI documents none; a bound keeps the text a stream must hold back
(the end of the reply that may still become a stop string) short."""
MAX_TOKENS = 32768
"""Largest `max_tokens` / `max_completion_tokens` accepted: a request asks for at most this many tokens per
choice (each reply is further capped by the room its prompt leaves in the model's context). Larger values
are a 400 before any work is queued."""
MAX_TOP_LOGPROBS = 20
Penalty = Annotated[float, Field(ge=-2, le=2)]


class ChatMessageIn(LenientModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(LenientModel):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(LenientModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(LenientModel):
    type: Literal["function"]
    function: dict[str, str]

    @field_validator("function")
    @classmethod
    def _has_name(cls, value: dict[str, str]) -> dict[str, str]:
        if not isinstance(value.get("name"), str) or not value["name"]:
            raise ValueError("tool_choice.function.name is required")
        return value


class NamedFunction(LenientModel):
    """The deprecated `function_call: {"name": …}`."""

    name: Annotated[str, Field(min_length=1, max_length=64)]


class JsonSchemaFormat(LenientModel):
    """`response_format.json_schema`. With `strict: true` decoding follows `schema` (a keyword openft does not
    enforce is a 400 naming its JSON pointer); without it the reply is only constrained to a JSON object."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: StrictBool | None = None


class ResponseFormat(LenientModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format.json_schema is required when type is json_schema")
        return self

    @property
    def strict_schema(self) -> dict[str, Any] | None:
        """The schema decoding must follow: a strict json_schema's (None: any JSON object will do)."""
        spec = self.json_schema
        return spec.schema_ if self.type == "json_schema" and spec is not None and spec.strict else None


class StreamOptions(LenientModel):
    include_usage: StrictBool | None = None


class SamplingRequest(LenientModel):
    """The fields chat and legacy completions share (OpenAI names, ranges and defaults)."""

    model: Annotated[str, Field(min_length=1, max_length=600)]
    max_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    stop: str | list[str] | None = None
    seed: StrictInt | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, float] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _bounded_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        """Checked here rather than with field constraints so that the 400 names `stop` and says what is wrong."""
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings are allowed, not {len(stops)}")
        if any(len(stop) > MAX_STOP_CHARS for stop in stops):
            raise ValueError(f"each stop string may have at most {MAX_STOP_CHARS} characters")
        return value


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1)]
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=MAX_TOKENS)] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None
    functions: Annotated[list[FunctionDefinition], Field(min_length=1, max_length=128)] | None = None
    """Deprecated by OpenAI in favour of `tools`, still sent by older clients: each is read as a function tool,
    and the reply answers in the old shape (`message.function_call`, finish_reason "function_call")."""
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    """Deprecated `tool_choice` of `functions`: "none", "auto" or `{"name": …}`."""

    @model_validator(mode="after")
    def _tools_or_functions(self) -> ChatCompletionRequest:
        if self.functions is not None and self.tools is not None:
            raise ValueError("give either tools or the deprecated functions, not both")
        if self.function_call is not None and self.tool_choice is not None:
            raise ValueError("give either tool_choice or the deprecated function_call, not both")
        return self

    @property
    def uses_functions(self) -> bool:
        """The request speaks the deprecated functions API, so the reply must too."""
        return self.functions is not None

    def effective_tools(self) -> list[ToolDefinition] | None:
        """`tools`, or the deprecated `functions` read as function tools."""
        if self.functions is not None:
            return [ToolDefinition(type="function", function=function) for function in self.functions]
        return self.tools

    def effective_tool_choice(self) -> Literal["none", "auto", "required"] | NamedToolChoice | None:
        """`tool_choice`, or the deprecated `function_call` read as one."""
        choice = self.function_call
        if isinstance(choice, NamedFunction):
            return NamedToolChoice(type="function", function={"name": choice.name})
        return choice if choice is not None else self.tool_choice


class DeploymentChatCompletionRequest(ChatCompletionRequest):
    """Azure's deployment-scoped call (`/deployments/{deployment}/chat/completions`): the path names the model,
    and Azure's documented call sends no `model` in the body. The route fills it in from the path."""

    model: Annotated[str, Field(max_length=600)] = ""


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    """The deprecated functions API's one call (a request that sent `functions`), instead of `tool_calls`."""

    @model_serializer(mode="wrap")
    def _omit_absent_tool_calls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """OpenAI's schema types `tool_calls` and `function_call` as objects when present; a reply without
        calls omits them."""
        data = handler(self)
        for key in ("tool_calls", "function_call"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    system_fingerprint: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCall | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None
    function_call: FunctionCallDelta | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    usage: CompletionUsage | None = None
