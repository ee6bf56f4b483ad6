"""Chat completions and legacy completions, plain or streamed, from any model name a caller may use.

Everything that can be wrong with a request is checked before anything is sent: a streamed answer
starts only after the engine has accepted the prompt, so bad input is always a plain 4xx. A failure
after streaming began is sent as an error chunk followed by `[DONE]`, as the SDKs expect.

Every method is a coroutine: requests wait for their model in a bounded line on the event loop
(`openft.services.admission`), so generation never occupies the server's thread pool and `/health`, auth,
files and jobs never wait behind it; a client that leaves stops its generation or leaves the line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from openft import __version__
from openft.errors import InvalidRequest, OpenFTError
from openft.inference import (
    GenerationParams,
    GenerationResult,
    GenerationStream,
    InferenceEngine,
    ModelTarget,
    StreamDelta,
)
from openft.inference.decoding import collect
from openft.inference.stream import StreamEnd
from openft.inference.types import FinishReason
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
    COMPLETIONS_DEFAULT_MAX_TOKENS,
    Completion,
    CompletionChoice,
    CompletionRequest,
    LegacyLogprobs,
)
from openft.services.admission import ClientDisconnected, Disconnected, ModelLines, unless_disconnected, watch
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


class _ChatChunks:
    """The SSE `data` payloads of one streamed chat completion, delta by delta."""

    def __init__(self, request: ChatCompletionRequest, params: GenerationParams):
        self._params = params
        self._include_usage = bool(request.stream_options and request.stream_options.include_usage)
        self._id, self._created, self._model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model
        self._calls_seen = [0] * params.n

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
        if delta.tool_calls:
            tool_deltas = []
            for call in delta.tool_calls:
                function = FunctionCall(name=call.name, arguments=call.arguments)
                tool_deltas.append(
                    ToolCallDelta(index=self._calls_seen[delta.index], id=call.id, type="function", function=function)
                )
                self._calls_seen[delta.index] += 1
            out.append(self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(tool_calls=tool_deltas))]))
        if delta.finish_reason:
            out.append(
                self._chunk([ChunkChoice(index=delta.index, delta=ChunkDelta(), finish_reason=delta.finish_reason)])
            )
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

    def opening(self, p_index: int, prompt: str) -> list[str]:
        if not self._echo:
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
    """Chat and legacy completions: each request waits for its model in a bounded line
    (`openft.services.admission`) without holding a thread, runs on the model's own thread, and stops (or
    leaves the line) when `disconnected()` says its client left."""

    def __init__(self, models: ModelService, engine: InferenceEngine, max_queued_requests: int = 64):
        self._models = models
        self._engine = engine
        self._lines = ModelLines(max_queued_requests)
        # Starting a generation may load a model or render a long prompt: done here, never on the event loop
        # nor in the server's thread pool. At most one start per model at a time (its line sees to that).
        self._starter = ThreadPoolExecutor(max_workers=4, thread_name_prefix="openft-start")

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

    @staticmethod
    def _chat_completion(
        request: ChatCompletionRequest, params: GenerationParams, result: GenerationResult
    ) -> ChatCompletion:
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

    async def chat(
        self, org_id: str | None, request: ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> ChatCompletion:
        """One chat completion, admitted (429 past the model's line), cancelled when the client leaves
        (ClientDisconnected)."""
        params, tools = self._chat_params(request)
        messages = self._messages(request)
        target = await anyio.to_thread.run_sync(self._models.target, org_id, request.model)
        stream = await self._admitted(
            target, lambda: self._engine.stream_chat(target, messages, params, tools=tools), disconnected
        )
        result = await _gather(stream, params, disconnected)
        return self._chat_completion(request, params, result)

    async def chat_stream(
        self, org_id: str | None, request: ChatCompletionRequest, disconnected: Disconnected | None = None
    ) -> AsyncIterator[str]:
        """SSE `data` payloads: role chunks, content deltas, finish chunks, optional usage, `[DONE]`.

        Admitted: the request waits for its turn and the engine accepts (or rejects) it before this returns,
        so a bad request is still a plain 4xx. Closing the payloads (the client left) stops the generation."""
        params, tools = self._chat_params(request)
        messages = self._messages(request)
        target = await anyio.to_thread.run_sync(self._models.target, org_id, request.model)
        stream = await self._admitted(
            target, lambda: self._engine.stream_chat(target, messages, params, tools=tools), disconnected
        )
        chunks = _ChatChunks(request, params)

        async def payloads() -> AsyncIterator[str]:
            try:
                try:
                    for payload in chunks.opening():
                        yield payload
                    async for delta in stream:
                        for payload in chunks.delta(delta):
                            yield payload
                    for payload in chunks.closing(stream.prompt_tokens, stream.completion_tokens):
                        yield payload
                finally:
                    stream.cancel()  # a no-op once it is done; else the client left: stop generating
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
        self, org_id: str | None, request: CompletionRequest, disconnected: Disconnected | None = None
    ) -> Completion:
        """A legacy completion, admitted: each prompt takes a turn on the model (the later ones are never
        refused)."""
        prompts, params = self._completion_params(request)
        target = await anyio.to_thread.run_sync(self._models.target, org_id, request.model)
        echo = bool(request.echo)
        results = []
        for p_index, prompt in enumerate(prompts):
            stream = await self._admitted(
                target,
                functools.partial(self._engine.stream_complete, target, prompt, params, echo=echo),
                disconnected,
                bounded=p_index == 0,
            )
            results.append(await _gather(stream, params, disconnected))
        return self._completion(request, params, results)

    async def complete_stream(
        self, org_id: str | None, request: CompletionRequest, disconnected: Disconnected | None = None
    ) -> AsyncIterator[str]:
        """A streamed legacy completion; the first prompt starts before this returns (see `chat_stream`)."""
        prompts, params = self._completion_params(request)
        target = await anyio.to_thread.run_sync(self._models.target, org_id, request.model)
        first = await self._admitted(
            target, functools.partial(self._engine.stream_complete, target, prompts[0], params), disconnected
        )
        chunks = _CompletionChunks(request, params)

        async def payloads() -> AsyncIterator[str]:
            prompt_tokens = completion_tokens = 0
            stream = first
            try:
                try:
                    for p_index, prompt in enumerate(prompts):
                        if p_index:
                            start = functools.partial(self._engine.stream_complete, target, prompt, params)
                            stream = await self._admitted(target, start, None, bounded=False)
                        for payload in chunks.opening(p_index, prompt):
                            yield payload
                        async for delta in stream:
                            for payload in chunks.delta(p_index, delta):
                                yield payload
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
        bounded: bool = True,
    ) -> GenerationStream:
        """Wait in the model's line (429 when it is full), then start the generation on the starter thread.

        The turn is given back when the stream's base is released, whoever reads (or drops) the stream;
        a client that leaves while waiting never starts, and one that left while starting is cancelled.
        """
        key = _line_key(target)
        try:
            ticket = await unless_disconnected(self._lines.enter(key, bounded=bounded), disconnected)
        except ClientDisconnected:
            log.info("%s: the client left while waiting in line; dropped", key.name)
            raise
        log.info("%s: generating (%d waiting behind)", key.name, self._lines.waiting(key))

        def ended(finished: Future[StreamEnd]) -> None:
            ticket.release_threadsafe()
            end = finished.result()
            if end.cancelled:
                log.info("%s: stopped after %d tokens: the client left", key.name, end.completion_tokens)

        def started() -> GenerationStream:
            try:
                stream = start()
            except BaseException:
                ticket.release_threadsafe()
                raise
            stream.finished.add_done_callback(ended)
            return stream

        stream = await asyncio.get_running_loop().run_in_executor(self._starter, started)
        if disconnected is not None and await disconnected():
            stream.cancel()
            raise ClientDisconnected
        return stream


def _line_key(target: ModelTarget) -> Path:
    """Requests wait per set of weights: adapters on one base share it (and its lock in the engine)."""
    return target.weights_path.resolve()


async def _gather(
    stream: GenerationStream, params: GenerationParams, disconnected: Disconnected | None
) -> GenerationResult:
    """Read a whole stream (as the non-streamed answer), stopping it if the client leaves meanwhile."""
    watcher = asyncio.ensure_future(watch(disconnected, stream.cancel)) if disconnected is not None else None
    try:
        deltas = [delta async for delta in stream]
    finally:
        stream.cancel()  # a no-op once it is done
        if watcher is not None:
            watcher.cancel()
    if watcher is not None and watcher.done() and not watcher.cancelled():
        raise ClientDisconnected  # it stopped the generation: what was produced answers nobody
    return GenerationResult(
        choices=collect(iter(deltas), params.n, params.logprobs),
        prompt_tokens=stream.prompt_tokens,
        completion_tokens=stream.completion_tokens,
    )


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
