"""Chat completions and legacy completions, plain or streamed, from any model name a caller may use.

Everything that can be wrong with a request is checked before anything is sent: a streamed answer
starts only after the engine has accepted the prompt, so bad input is always a plain 4xx. A failure
after streaming began is sent as an error chunk followed by `[DONE]`, as the SDKs expect.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from openft import __version__
from openft.errors import InvalidRequest, OpenFTError
from openft.inference import GenerationParams, GenerationResult, InferenceEngine
from openft.protocol.chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionMessage,
    ChatCompletionRequest,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    CompletionUsage,
    FunctionCall,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from openft.protocol.completions import (
    DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionRequest,
    LegacyLogprobs,
)
from openft.services.models import ModelService

log = logging.getLogger(__name__)
SYSTEM_FINGERPRINT = f"openft-{__version__}"
MAX_COMPLETION_CHOICES = 16
"""Legacy completions: prompts × n may not exceed this."""
DONE = "[DONE]"


def _usage(prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
    return CompletionUsage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _token_logprobs(items: Sequence[Any] | None) -> list[TokenLogprob] | None:
    if items is None:
        return None
    return [
        TokenLogprob(
            token=item.token,
            logprob=item.logprob,
            bytes=list(item.bytes),
            top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=list(t.bytes)) for t in item.top_logprobs],
        )
        for item in items
    ]


def _tool_calls(calls: Sequence[Any] | None) -> list[ToolCall] | None:
    if not calls:
        return None
    return [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls]


def _error_chunk(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, OpenFTError):
        return {
            "error": {"message": exc.message, "type": "invalid_request_error", "param": exc.param, "code": exc.code}
        }
    return {
        "error": {
            "message": "The server had an error while generating.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }


class InferenceService:
    def __init__(self, models: ModelService, engine: InferenceEngine):
        self._models = models
        self._engine = engine

    # chat ---------------------------------------------------------------------------------------
    @staticmethod
    def _chat_params(request: ChatCompletionRequest) -> tuple[GenerationParams, list[dict[str, Any]] | None]:
        if request.logit_bias:
            raise InvalidRequest("logit_bias is not supported by openft.", param="logit_bias")
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true.", param="top_logprobs")
        if request.tool_choice is not None and not request.tools:
            raise InvalidRequest("tool_choice is only allowed when tools are specified.", param="tool_choice")
        tool_choice: Any = request.tool_choice
        if tool_choice is not None and not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
            names = {t.function.name for t in request.tools or []}
            if tool_choice["function"]["name"] not in names:
                raise InvalidRequest("tool_choice names a function that is not in tools.", param="tool_choice")
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        params = GenerationParams(
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            n=request.n or 1,
            stop=stop or None,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=bool(request.logprobs),
            top_logprobs=request.top_logprobs or 0,
            json_object=request.response_format is not None and request.response_format.type != "text",
            tool_choice=tool_choice,
        )
        tools = [t.model_dump(exclude_none=True) for t in request.tools] if request.tools else None
        return params, tools

    @staticmethod
    def _messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
        keep = {"role", "content", "name", "tool_calls", "tool_call_id"}
        return [m.model_dump(exclude_none=True, include=keep) for m in request.messages]

    def chat(self, org_id: str | None, request: ChatCompletionRequest) -> ChatCompletion:
        params, tools = self._chat_params(request)
        target = self._models.target(org_id, request.model)
        result: GenerationResult = self._engine.chat(target, self._messages(request), params, tools=tools)
        choices = []
        for index, choice in enumerate(result.choices):
            calls = _tool_calls(choice.tool_calls)
            logprobs = ChoiceLogprobs(content=_token_logprobs(choice.logprobs)) if params.logprobs else None
            message = ChatCompletionMessage(
                content=choice.text if not calls else (choice.text or None), tool_calls=calls
            )
            choices.append(
                ChatCompletionChoice(
                    index=index, message=message, finish_reason=choice.finish_reason, logprobs=logprobs
                )
            )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=choices,
            usage=_usage(result.prompt_tokens, result.completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    def chat_stream(self, org_id: str | None, request: ChatCompletionRequest) -> Iterator[str]:
        """SSE `data` payloads: role chunks, content deltas, finish chunks, optional usage, `[DONE]`.

        The engine accepts (or rejects) the request here, before the first payload is produced.
        """
        params, tools = self._chat_params(request)
        target = self._models.target(org_id, request.model)
        stream = self._engine.stream_chat(target, self._messages(request), params, tools=tools)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}

        def chunk(choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
            payload = ChatCompletionChunk(**base, choices=choices, system_fingerprint=SYSTEM_FINGERPRINT, usage=usage)
            data = payload.model_dump()
            for choice in data["choices"]:  # a delta carries only what it adds
                choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
            if usage is None and not include_usage:
                del data["usage"]  # with include_usage, OpenAI sends an explicit null on every chunk but the last
            return _json(data)

        def payloads() -> Iterator[str]:
            try:
                with stream:
                    for index in range(params.n):
                        yield chunk([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))])
                    calls_seen = [0] * params.n
                    for delta in stream:
                        if delta.text:
                            logprobs = (
                                ChoiceLogprobs(content=_token_logprobs(delta.logprobs)) if params.logprobs else None
                            )
                            yield chunk(
                                [
                                    ChunkChoice(
                                        index=delta.index, delta=ChunkDelta(content=delta.text), logprobs=logprobs
                                    )
                                ]
                            )
                        if delta.tool_calls:
                            tool_deltas = []
                            for call in delta.tool_calls:
                                function = FunctionCall(name=call.name, arguments=call.arguments)
                                tool_deltas.append(
                                    ToolCallDelta(
                                        index=calls_seen[delta.index], id=call.id, type="function", function=function
                                    )
                                )
                                calls_seen[delta.index] += 1
                            yield chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(tool_calls=tool_deltas))])
                        if delta.finish_reason:
                            yield chunk(
                                [ChunkChoice(index=delta.index, delta=ChunkDelta(), finish_reason=delta.finish_reason)]
                            )
                    if include_usage:
                        yield chunk([], usage=_usage(stream.prompt_tokens, stream.completion_tokens))
            except Exception as exc:  # after streaming began: an error chunk, then [DONE]
                log.exception("chat stream failed")
                yield _json(_error_chunk(exc))
            yield DONE

        return payloads()

    # legacy completions -------------------------------------------------------------------------
    @staticmethod
    def _completion_params(request: CompletionRequest) -> tuple[list[str], GenerationParams]:
        if request.suffix:
            raise InvalidRequest("suffix (insertion) is not supported by openft.", param="suffix")
        if request.logit_bias:
            raise InvalidRequest("logit_bias is not supported by openft.", param="logit_bias")
        n = request.n or 1
        if request.best_of is not None and request.best_of != n:
            raise InvalidRequest("best_of other than n is not supported by openft.", param="best_of")
        if request.echo and request.logprobs is not None:
            raise InvalidRequest("echo together with logprobs is not supported by openft.", param="echo")
        prompts = [request.prompt] if isinstance(request.prompt, str) else list(request.prompt)
        if len(prompts) * n > MAX_COMPLETION_CHOICES:
            raise InvalidRequest(f"prompts × n may be at most {MAX_COMPLETION_CHOICES}.", param="n")
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        params = GenerationParams(
            max_tokens=request.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            n=n,
            stop=stop or None,
            seed=request.seed,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            logprobs=request.logprobs is not None,
            top_logprobs=request.logprobs or 0,
        )
        return prompts, params

    def complete(self, org_id: str | None, request: CompletionRequest) -> Completion:
        prompts, params = self._completion_params(request)
        target = self._models.target(org_id, request.model)
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for p_index, prompt in enumerate(prompts):
            result = self._engine.complete(target, prompt, params, echo=bool(request.echo))
            prompt_tokens += result.prompt_tokens
            completion_tokens += result.completion_tokens
            for c_index, choice in enumerate(result.choices):
                logprobs = _legacy_logprobs(choice.logprobs, params.top_logprobs) if params.logprobs else None
                choices.append(
                    CompletionChoice(
                        index=p_index * params.n + c_index,
                        text=choice.text or "",
                        finish_reason=choice.finish_reason,
                        logprobs=logprobs,
                    )
                )
        return Completion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=choices,
            usage=_usage(prompt_tokens, completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    def complete_stream(self, org_id: str | None, request: CompletionRequest) -> Iterator[str]:
        prompts, params = self._completion_params(request)
        target = self._models.target(org_id, request.model)
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        first = self._engine.stream_complete(target, prompts[0], params)  # rejects a bad request before we start
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": request.model}

        def chunk(choices: list[CompletionChoice], usage: CompletionUsage | None = None) -> str:
            data = Completion(**base, choices=choices, usage=usage, system_fingerprint=SYSTEM_FINGERPRINT).model_dump(
                exclude_none=True
            )
            for choice in data["choices"]:
                choice.setdefault("finish_reason", None)
                choice.setdefault("logprobs", None)
            return _json(data)

        def payloads() -> Iterator[str]:
            prompt_tokens = completion_tokens = 0
            try:
                for p_index, prompt in enumerate(prompts):
                    stream = first if p_index == 0 else self._engine.stream_complete(target, prompt, params)
                    with stream:
                        if request.echo:
                            for c in range(params.n):
                                yield chunk(
                                    [CompletionChoice(index=p_index * params.n + c, text=prompt, finish_reason=None)]
                                )
                        for delta in stream:
                            index = p_index * params.n + delta.index
                            logprobs = (
                                _legacy_logprobs(delta.logprobs, params.top_logprobs) if params.logprobs else None
                            )
                            if delta.text or delta.finish_reason:
                                yield chunk(
                                    [
                                        CompletionChoice(
                                            index=index,
                                            text=delta.text or "",
                                            finish_reason=delta.finish_reason,
                                            logprobs=logprobs,
                                        )
                                    ]
                                )
                    prompt_tokens += stream.prompt_tokens
                    completion_tokens += stream.completion_tokens
                if include_usage:
                    yield chunk([], usage=_usage(prompt_tokens, completion_tokens))
            except Exception as exc:
                log.exception("completion stream failed")
                yield _json(_error_chunk(exc))
            yield DONE

        return payloads()


def _legacy_logprobs(items: Sequence[Any] | None, top: int) -> LegacyLogprobs | None:
    """The legacy completions logprobs layout: parallel lists and `{token: logprob}` maps."""
    if items is None:
        return None
    offsets, offset = [], 0
    for item in items:
        offsets.append(offset)
        offset += len(item.token)
    return LegacyLogprobs(
        tokens=[item.token for item in items],
        token_logprobs=[item.logprob for item in items],
        top_logprobs=[{t.token: t.logprob for t in item.top_logprobs} for item in items] if top else None,
        text_offset=offsets,
    )


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))
