"""Chat completions and legacy completions, plain or streamed, from any model name a caller may use.

Everything that can be wrong with a request is checked before anything is sent: a streamed answer
starts only after the engine has accepted the prompt, so bad input is always a plain 4xx. A failure
after streaming began is sent as an error chunk followed by `[DONE]`, as the SDKs expect.

Every method is a coroutine: a request is queued for its model's running batch (the engine batches every
request on one model, `openft.inference.scheduler`) and awaits its admission on the event loop, holding no
thread, so generation never occupies the server's thread pool and `/health`, auth, files and jobs never
wait behind it. The line per model is bounded (`max_queued_requests`: 429 with `Retry-After` past it), a
request that waits longer than `request_timeout` gets 503 with `Retry-After`, and a client that leaves
stops its generation or leaves the line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from openft import __version__
from openft.errors import InvalidRequest, OpenFTError, RateLimited, ServiceUnavailable
from openft.inference import (
    GenerationParams,
    GenerationResult,
    GenerationStream,
    StreamDelta,
)
from openft.inference.backends import ServingEngine
from openft.inference.decoding import collect
from openft.inference.stream import StreamEnd, call_soon
from openft.inference.types import FinishReason, ModelTarget
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
    FunctionCallDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from openft.protocol.completions import (
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionRequest,
    LegacyLogprobs,
)
from openft.services.admission import ClientDisconnected, Disconnected, unless_disconnected, watch
from openft.services.metrics import ServingMetrics
from openft.services.models import Caller, ModelService

log = logging.getLogger(__name__)
SYSTEM_FINGERPRINT = f"openft-{__version__}"
MAX_RETRY_AFTER_SECONDS = 60
"""The SDKs honour a `Retry-After` up to a minute; a longer estimate is no more useful to them."""
_SMOOTHING = 0.2
"""Weight of the newest request in the running mean of how long a request takes."""
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


class _ChatChunks:
    """The SSE `data` payloads of one streamed chat completion, delta by delta."""

    def __init__(self, request: ChatCompletionRequest, params: GenerationParams):
        self._params = params
        self._include_usage = bool(request.stream_options and request.stream_options.include_usage)
        self._id, self._created, self._model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model
        self._calls_seen = [0] * params.n
        self._functions = request.uses_functions  # answer in the deprecated functions API's shape

    def _chunk(self, choices: list[ChunkChoice], usage: CompletionUsage | None = None) -> str:
        payload = ChatCompletionChunk(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            system_fingerprint=SYSTEM_FINGERPRINT,
            usage=usage,
        )
        data = payload.model_dump()
        for choice in data["choices"]:  # a delta carries only what it adds
            choice["delta"] = {key: value for key, value in choice["delta"].items() if value is not None}
        if usage is None and not self._include_usage:
            del data["usage"]  # with include_usage, OpenAI sends an explicit null on every chunk but the last
        return _json(data)

    def opening(self) -> list[str]:
        return [
            self._chunk([ChunkChoice(index=index, delta=ChunkDelta(role="assistant", content=""))])
            for index in range(self._params.n)
        ]

    def delta(self, delta: StreamDelta) -> list[str]:
        out = []
        if delta.text:
            logprobs = ChoiceLogprobs(content=_token_logprobs(delta.logprobs)) if self._params.logprobs else None
            out.append(
                self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(content=delta.text), logprobs=logprobs)])
            )
        if delta.tool_calls and self._functions:
            if not self._calls_seen[delta.index]:  # that API has one call per reply
                call = delta.tool_calls[0]
                function_delta = FunctionCallDelta(name=call.name, arguments=call.arguments)
                out.append(
                    self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(function_call=function_delta))])
                )
            self._calls_seen[delta.index] += len(delta.tool_calls)
        elif delta.tool_calls:
            tool_deltas = []
            for call in delta.tool_calls:
                function = FunctionCall(name=call.name, arguments=call.arguments)
                tool_deltas.append(
                    ToolCallDelta(index=self._calls_seen[delta.index], id=call.id, type="function", function=function)
                )
                self._calls_seen[delta.index] += 1
            out.append(self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(tool_calls=tool_deltas))]))
        if delta.finish_reason:
            finish: Any = delta.finish_reason
            if self._functions and finish == "tool_calls":
                finish = "function_call"
            out.append(self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(), finish_reason=finish)]))
        return out

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        return [self._chunk([], usage=_usage(prompt_tokens, completion_tokens))] if self._include_usage else []


class _CompletionChunks:
    """The SSE `data` payloads of one streamed legacy completion (all its prompts)."""

    def __init__(self, request: CompletionRequest, params: GenerationParams):
        self._params = params
        self._echo = bool(request.echo)
        self._include_usage = bool(request.stream_options and request.stream_options.include_usage)
        self._id, self._created, self._model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), request.model

    def _chunk(self, choices: list[CompletionChoice], usage: CompletionUsage | None = None) -> str:
        completion = Completion(
            id=self._id,
            created=self._created,
            model=self._model,
            choices=choices,
            usage=usage,
            system_fingerprint=SYSTEM_FINGERPRINT,
        )
        data = completion.model_dump(exclude_none=True)
        for choice in data["choices"]:
            choice.setdefault("finish_reason", None)
            choice.setdefault("logprobs", None)
        return _json(data)

    def opening(self, p_index: int, prompt: str | list[int]) -> list[str]:
        if not self._echo or not isinstance(prompt, str):  # echo of a token prompt is refused up front
            return []
        n = self._params.n
        return [
            self._chunk([CompletionChoice(index=p_index * n + c, text=prompt, finish_reason=None)]) for c in range(n)
        ]

    def delta(self, p_index: int, delta: StreamDelta) -> list[str]:
        if not (delta.text or delta.finish_reason):
            return []
        params = self._params
        logprobs = _legacy_logprobs(delta.logprobs, params.top_logprobs) if params.logprobs else None
        choice = CompletionChoice(
            index=p_index * params.n + delta.index,
            text=delta.text or "",
            finish_reason=_legacy_finish_reason(delta.finish_reason),
            logprobs=logprobs,
        )
        return [self._chunk([choice])]

    def closing(self, prompt_tokens: int, completion_tokens: int) -> list[str]:
        return [self._chunk([], usage=_usage(prompt_tokens, completion_tokens))] if self._include_usage else []


class InferenceService:
    """Chat and legacy completions: each request is queued for its model's batch and awaits admission without
    holding a thread (see the module docstring), and stops (or leaves the line) when `disconnected()` says
    its client left."""

    def __init__(
        self,
        models: ModelService,
        engine: ServingEngine,
        max_queued_requests: int = 64,
        *,
        request_timeout: float = 600.0,
        metrics: ServingMetrics | None = None,
    ):
        if max_queued_requests < 0:
            raise ValueError("max_queued_requests must not be negative")
        self._models = models
        self._engine = engine
        self._max_queued = max_queued_requests
        self._timeout = request_timeout
        self._metrics = metrics
        self._waiting: dict[Path, int] = {}  # per model: requests not yet in its batch (on the event loop only)
        self._request_seconds = 1.0  # running mean of how long a request takes (for Retry-After)
        # Starting a generation may load a model or render a long prompt: done here, never on the event loop
        # nor in the server's thread pool.
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="openft-start")

    # chat ---------------------------------------------------------------------------------------
    @staticmethod
    def _chat_params(request: ChatCompletionRequest) -> tuple[GenerationParams, list[dict[str, Any]] | None]:
        if request.logit_bias:
            raise InvalidRequest("logit_bias is not supported by openft.", param="logit_bias")
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true.", param="top_logprobs")
        request_tools = request.effective_tools()
        tool_choice: Any = request.effective_tool_choice()
        choice_param, tools_param = (
            ("function_call", "functions") if request.uses_functions else ("tool_choice", "tools")
        )
        if request.function_call is not None and not request.functions:
            raise InvalidRequest("function_call is only allowed when functions are specified.", param="function_call")
        if tool_choice is not None and not request_tools:
            raise InvalidRequest(
                f"{choice_param} is only allowed when {tools_param} are specified.", param=choice_param
            )
        if tool_choice is not None and not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
            names = {t.function.name for t in request_tools or []}
            if tool_choice["function"]["name"] not in names:
                raise InvalidRequest(
                    f"{choice_param} names a function that is not in {tools_param}.", param=choice_param
                )
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
            json_schema=request.response_format.strict_schema if request.response_format is not None else None,
            tool_choice=tool_choice,
        )
        tools = [t.model_dump(exclude_none=True) for t in request_tools] if request_tools else None
        return params, tools

    @staticmethod
    def _messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
        keep = {"role", "content", "name", "tool_calls", "tool_call_id"}
        return _legacy_function_messages(
            [m.model_dump(exclude_none=True, include=keep | {"function_call"}) for m in request.messages]
        )

    @staticmethod
    def _chat_completion(
        request: ChatCompletionRequest, params: GenerationParams, result: GenerationResult
    ) -> ChatCompletion:
        choices = []
        for index, choice in enumerate(result.choices):
            calls = _tool_calls(choice.tool_calls)
            logprobs = ChoiceLogprobs(content=_token_logprobs(choice.logprobs)) if params.logprobs else None
            content = choice.text if not calls else (choice.text or None)
            finish_reason: Any = choice.finish_reason
            if request.uses_functions:  # the deprecated API's shape: one `function_call`, no `tool_calls`
                function_call = calls[0].function if calls else None
                finish_reason = "function_call" if finish_reason == "tool_calls" else finish_reason
                message = ChatCompletionMessage(content=content, function_call=function_call)
            else:
                message = ChatCompletionMessage(content=content, tool_calls=calls)
            choices.append(
                ChatCompletionChoice(index=index, message=message, finish_reason=finish_reason, logprobs=logprobs)
            )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=choices,
            usage=_usage(result.prompt_tokens, result.completion_tokens),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    async def chat(
        self, who: Caller | str | None, request: ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> ChatCompletion:
        """One chat completion, admitted (429 past the model's line, 503 after waiting too long), cancelled
        when the client leaves (ClientDisconnected)."""
        arrived = time.monotonic()
        params, tools = self._chat_params(request)
        messages = self._messages(request)
        target = await anyio.to_thread.run_sync(self._models.target, who, request.model)
        start = functools.partial(self._engine.stream_chat, target, messages, params, tools, org=Caller.of(who).scope)
        stream = await self._admitted(target, start, disconnected, endpoint="chat", arrived=arrived)
        result = await _gather(self._observed(stream, "chat", arrived), stream, params, disconnected)
        return self._chat_completion(request, params, result)

    async def check_chat(self, who: Caller | str | None, request: ChatCompletionRequest) -> None:
        """Raise what `chat` would raise before admitting `request` (its options, an unknown model or one the
        caller may not use), without generating: work that runs later (background responses) answers those
        4xx at once, like a synchronous request."""
        self._chat_params(request)
        await anyio.to_thread.run_sync(self._models.target, who, request.model)

    async def chat_stream(
        self, who: Caller | str | None, request: ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> AsyncIterator[str]:
        """SSE `data` payloads: role chunks, content deltas, finish chunks, optional usage, `[DONE]`.

        Admitted: the request waits for its turn and the engine accepts (or rejects) it before this returns,
        so a bad request is still a plain 4xx. Closing the payloads (the client left) stops the generation."""
        arrived = time.monotonic()
        params, tools = self._chat_params(request)
        messages = self._messages(request)
        target = await anyio.to_thread.run_sync(self._models.target, who, request.model)
        start = functools.partial(self._engine.stream_chat, target, messages, params, tools, org=Caller.of(who).scope)
        stream = await self._admitted(target, start, disconnected, endpoint="chat", arrived=arrived)
        chunks = _ChatChunks(request, params)

        async def payloads() -> AsyncIterator[str]:
            deltas = self._observed(stream, "chat", arrived)
            try:
                try:
                    for payload in chunks.opening():
                        yield payload
                    async for delta in deltas:
                        for payload in chunks.delta(delta):
                            yield payload
                    for payload in chunks.closing(stream.prompt_tokens, stream.completion_tokens):
                        yield payload
                finally:
                    stream.cancel()  # a no-op once it is done; else the client left: stop generating
                    await deltas.aclose()
            except Exception as exc:  # after streaming began: an error chunk, then [DONE]
                log.exception("chat stream failed")
                yield _json(_error_chunk(exc))
            yield DONE

        return payloads()

    # legacy completions -------------------------------------------------------------------------
    @staticmethod
    def _completion_params(request: CompletionRequest) -> tuple[list[str | list[int]], GenerationParams]:
        if request.suffix:
            raise InvalidRequest("suffix (insertion) is not supported by openft.", param="suffix")
        if request.logit_bias:
            raise InvalidRequest("logit_bias is not supported by openft.", param="logit_bias")
        n = request.n or 1
        if request.best_of is not None and request.best_of != n:
            raise InvalidRequest("best_of other than n is not supported by openft.", param="best_of")
        if request.echo and request.logprobs is not None:
            raise InvalidRequest("echo together with logprobs is not supported by openft.", param="echo")
        prompts = _prompts(request.prompt)
        if request.echo and any(not isinstance(prompt, str) for prompt in prompts):
            raise InvalidRequest("echo is not supported with a prompt given as token ids.", param="echo")
        if len(prompts) * n > MAX_COMPLETION_CHOICES:
            raise InvalidRequest(f"prompts × n may be at most {MAX_COMPLETION_CHOICES}.", param="n")
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        params = GenerationParams(
            max_tokens=request.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS,
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

    @staticmethod
    def _completion(
        request: CompletionRequest, params: GenerationParams, results: Sequence[GenerationResult]
    ) -> Completion:
        choices = []
        for p_index, result in enumerate(results):
            for c_index, choice in enumerate(result.choices):
                logprobs = _legacy_logprobs(choice.logprobs, params.top_logprobs) if params.logprobs else None
                choices.append(
                    CompletionChoice(
                        index=p_index * params.n + c_index,
                        text=choice.text or "",
                        finish_reason=_legacy_finish_reason(choice.finish_reason),
                        logprobs=logprobs,
                    )
                )
        return Completion(
            id=f"cmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=request.model,
            choices=choices,
            usage=_usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
            system_fingerprint=SYSTEM_FINGERPRINT,
        )

    async def complete(
        self, who: Caller | str | None, request: CompletionRequest, disconnected: Disconnected | None = None
    ) -> Completion:
        """A legacy completion: its prompts are generated together, in the model's batch (only the first is
        ever refused: the others are part of a request already admitted)."""
        arrived = time.monotonic()
        prompts, params = self._completion_params(request)
        target = await anyio.to_thread.run_sync(self._models.target, who, request.model)
        echo = bool(request.echo)

        async def one(p_index: int, prompt: str | list[int]) -> GenerationResult:
            start = functools.partial(
                self._engine.stream_complete, target, prompt, params, echo=echo, org=Caller.of(who).scope
            )
            stream = await self._admitted(
                target, start, disconnected, endpoint="completions", arrived=arrived, bounded=p_index == 0
            )
            return await _gather(self._observed(stream, "completions", arrived), stream, params, disconnected)

        first = await one(0, prompts[0])  # refused (or not) before the others are queued
        rest = await asyncio.gather(*(one(i, prompt) for i, prompt in enumerate(prompts) if i))
        return self._completion(request, params, [first, *rest])

    async def complete_stream(
        self, who: Caller | str | None, request: CompletionRequest, disconnected: Disconnected | None = None
    ) -> AsyncIterator[str]:
        """A streamed legacy completion; the first prompt starts before this returns (see `chat_stream`)."""
        arrived = time.monotonic()
        prompts, params = self._completion_params(request)
        target = await anyio.to_thread.run_sync(self._models.target, who, request.model)

        def start(prompt: str | list[int]) -> Callable[[], GenerationStream]:
            return functools.partial(self._engine.stream_complete, target, prompt, params, org=Caller.of(who).scope)

        first = await self._admitted(target, start(prompts[0]), disconnected, endpoint="completions", arrived=arrived)
        chunks = _CompletionChunks(request, params)

        async def payloads() -> AsyncIterator[str]:
            prompt_tokens = completion_tokens = 0
            stream = first
            try:
                try:
                    for p_index, prompt in enumerate(prompts):
                        if p_index:
                            stream = await self._admitted(
                                target, start(prompt), None, endpoint="completions", arrived=arrived, bounded=False
                            )
                        for payload in chunks.opening(p_index, prompt):
                            yield payload
                        deltas = self._observed(stream, "completions", arrived)
                        try:
                            async for delta in deltas:
                                for payload in chunks.delta(p_index, delta):
                                    yield payload
                        finally:
                            await deltas.aclose()
                        prompt_tokens += stream.prompt_tokens
                        completion_tokens += stream.completion_tokens
                    for payload in chunks.closing(prompt_tokens, completion_tokens):
                        yield payload
                finally:
                    stream.cancel()
            except Exception as exc:
                log.exception("completion stream failed")
                yield _json(_error_chunk(exc))
            yield DONE

        return payloads()

    # admission ----------------------------------------------------------------------------------
    async def _admitted(
        self,
        target: ModelTarget,
        start: Callable[[], GenerationStream],
        disconnected: Disconnected | None,
        *,
        endpoint: str,
        arrived: float,
        bounded: bool = True,
    ) -> GenerationStream:
        """Queue the request for its model's batch (429 when the model's line is full) and wait until it is in
        the batch: 503 with `Retry-After` past `request_timeout`, ClientDisconnected when the client leaves
        meanwhile (the request leaves the line without running)."""
        key = _line_key(target)
        waiting = self._waiting.get(key, 0)  # counted here, on the event loop: exact however many arrive at once
        if bounded and waiting >= self._max_queued:
            self._count(endpoint, "rejected")
            raise RateLimited(
                f"Too many requests are waiting for this model (at most {self._max_queued}); retry later.",
                retry_after=self._retry_after(),
            )
        self._waiting[key] = waiting + 1
        try:
            return await self._admit(target, start, disconnected, endpoint=endpoint, arrived=arrived)
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key]

    async def _admit(
        self,
        target: ModelTarget,
        start: Callable[[], GenerationStream],
        disconnected: Disconnected | None,
        *,
        endpoint: str,
        arrived: float,
    ) -> GenerationStream:
        """Start the generation on the starter thread (it may load a model) and await its admission."""
        key = _line_key(target)
        try:
            stream = await asyncio.get_running_loop().run_in_executor(self._starter, start)
        except BaseException as exc:
            self._count(endpoint, "rejected" if isinstance(exc, OpenFTError) else "error")
            raise

        def ended(finished: Future[StreamEnd]) -> None:
            end = finished.result()
            ran = started.done() and not started.cancelled() and started.exception() is None
            if ran:  # Retry-After estimates how long a request that runs takes (not one refused while waiting)
                seconds = time.monotonic() - arrived
                self._request_seconds = (1 - _SMOOTHING) * self._request_seconds + _SMOOTHING * seconds
            if ran and self._metrics is not None:  # counted here, whoever read (or dropped) the stream
                outcome = "error" if end.error is not None else "cancelled" if end.cancelled else "ok"
                self._metrics.request_finished(endpoint, outcome, prompt_tokens, end.completion_tokens)
            if end.cancelled and ran:
                log.info("%s: stopped after %d tokens: the client left", key.name, end.completion_tokens)

        started, prompt_tokens = stream.started, stream.prompt_tokens
        stream.finished.add_done_callback(ended)
        try:
            await asyncio.wait_for(unless_disconnected(_awaitable(stream.started), disconnected), self._timeout)
        except TimeoutError:
            stream.cancel()
            self._count(endpoint, "timeout")
            log.info("%s: waited %.0f s for room in the batch; refused", key.name, self._timeout)
            raise ServiceUnavailable(
                f"The model is busy: this request waited {self._timeout:g} s for room in its batch "
                "(OPENFT_REQUEST_TIMEOUT_SECONDS); retry later.",
                retry_after=self._retry_after(),
            ) from None
        except ClientDisconnected:
            stream.cancel()
            self._count(endpoint, "cancelled")
            log.info("%s: the client left while waiting in line; dropped", key.name)
            raise
        except BaseException as exc:
            stream.cancel()
            self._count(endpoint, "rejected" if isinstance(exc, OpenFTError) else "error")
            raise
        if self._metrics is not None:
            self._metrics.queued(time.monotonic() - arrived)
        log.info("%s: generating (%d waiting behind)", key.name, self._waiting.get(key, 1) - 1)
        return stream

    async def _observed(
        self, stream: GenerationStream, endpoint: str, arrived: float
    ) -> AsyncGenerator[StreamDelta, None]:
        """The stream's deltas, timed for the metrics: the first token, and the gaps between a choice's tokens.
        (The request itself is counted when its generation ends, in `_admit`.)"""
        metrics = self._metrics
        last: dict[int, float] = {}
        async for delta in stream:
            if metrics is not None:
                now = time.monotonic()
                if not last:
                    metrics.first_token(endpoint, now - arrived)
                elif delta.index in last:
                    metrics.inter_token(now - last[delta.index])
                last[delta.index] = now
            yield delta

    def close(self) -> None:
        """Stop serving: every model is unloaded (the server is shutting down)."""
        self._starter.shutdown(wait=False)
        self._engine.close()

    def _count(self, endpoint: str, outcome: str) -> None:
        """A request that ended before it generated anything."""
        if self._metrics is not None:
            self._metrics.request_finished(endpoint, outcome, 0, 0)

    def _retry_after(self) -> float:
        """About when room frees up: when a running request is likely done."""
        return min(MAX_RETRY_AFTER_SECONDS, max(1.0, self._request_seconds))


def _awaitable(future: Future[None]) -> asyncio.Future[None]:
    """An event-loop future that follows `future` (one way: cancelling it leaves `future` alone)."""
    loop = asyncio.get_running_loop()
    mirror: asyncio.Future[None] = loop.create_future()

    def copy(done: Future[None]) -> None:
        if mirror.done():
            return
        if done.cancelled():
            mirror.cancel()
        elif (exc := done.exception()) is not None:
            mirror.set_exception(exc)
        else:
            mirror.set_result(None)

    future.add_done_callback(lambda done: call_soon(loop, copy, done))
    return mirror


def _line_key(target: ModelTarget) -> Path:
    """Requests wait per set of weights: adapters on one base share it (and its lock in the engine)."""
    return target.weights_path.resolve()


async def _gather(
    deltas: AsyncIterator[StreamDelta],
    stream: GenerationStream,
    params: GenerationParams,
    disconnected: Disconnected | None,
) -> GenerationResult:
    """Read a whole stream (as the non-streamed answer), stopping it if the client leaves meanwhile."""
    watcher = asyncio.ensure_future(watch(disconnected, stream.cancel)) if disconnected is not None else None
    try:
        collected = [delta async for delta in deltas]
    finally:
        stream.cancel()  # a no-op once it is done
        if watcher is not None:
            watcher.cancel()
    if watcher is not None and watcher.done() and not watcher.cancelled():
        raise ClientDisconnected  # it stopped the generation: what was produced answers nobody
    return GenerationResult(
        choices=collect(iter(collected), params.n, params.logprobs),
        prompt_tokens=stream.prompt_tokens,
        completion_tokens=stream.completion_tokens,
    )


def _legacy_function_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The deprecated functions API's turns in the tools API's shape, which chat templates render: an assistant
    `function_call` becomes a one-call `tool_calls`, and a `function` message (its result) a `tool` message
    answering it."""
    out = []
    last_call_id: str | None = None
    for index, message in enumerate(messages):
        call = message.pop("function_call", None)
        if message["role"] == "assistant" and isinstance(call, dict) and "tool_calls" not in message:
            last_call_id = f"call_{index}"
            function = {"name": str(call.get("name", "")), "arguments": str(call.get("arguments", ""))}
            message["tool_calls"] = [{"id": last_call_id, "type": "function", "function": function}]
        elif message["role"] == "function":
            message["role"] = "tool"
            if last_call_id is not None:
                message.setdefault("tool_call_id", last_call_id)
        out.append(message)
    return out


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """A legacy completion's prompts: a string, strings, one prompt as token ids, or several as lists of ids."""
    if isinstance(prompt, str):
        return [prompt]
    if all(isinstance(item, int) for item in prompt):
        return [[item for item in prompt if isinstance(item, int)]]
    return [item for item in prompt if not isinstance(item, int)]


def _legacy_finish_reason(reason: FinishReason | None) -> Literal["stop", "length"] | None:
    """A legacy completion's finish_reason: it takes no tools, so no reply of it ends in a tool call."""
    if reason == "tool_calls":
        raise AssertionError("a legacy completion ended in a tool call")
    return reason


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
