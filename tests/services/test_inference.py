"""The SSE payload sequence, including a failure after streaming began, with a fake engine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openft.errors import ModelNotFound
from openft.inference import ModelTarget
from openft.inference.stream import StreamEnd
from openft.protocol.chat import ChatCompletionRequest
from openft.services.inference import InferenceService


@dataclass
class Delta:
    index: int
    text: str = ""
    logprobs: Any = None
    tool_calls: Any = None
    finish_reason: str | None = None


class FakeStream:
    """What the service reads of a `GenerationStream`: async deltas, token counts, `started`, `finished`,
    `cancel`."""

    prompt_tokens = 7
    completion_tokens = 2

    def __init__(self, deltas: list[Delta], fail_after: int | None):
        self._deltas, self._fail_after, self.closed = deltas, fail_after, False
        self.finished: Future[StreamEnd] = Future()
        self.started: Future[None] = Future()
        self.started.set_result(None)  # admitted into the batch at once

    async def _deltas_in_turn(self) -> AsyncIterator[Delta]:
        try:
            for i, delta in enumerate(self._deltas):
                if self._fail_after is not None and i == self._fail_after:
                    raise RuntimeError("the model fell over")
                yield delta
        finally:
            self._end()

    def __aiter__(self) -> AsyncIterator[Delta]:
        return self._deltas_in_turn()

    def cancel(self) -> None:
        self.closed = True
        self._end()

    def _end(self) -> None:
        if not self.finished.done():
            self.finished.set_result(StreamEnd(self.completion_tokens))


class FakeEngine:
    def __init__(self, fail_after: int | None = None):
        self.stream = FakeStream([Delta(0, "Hel"), Delta(0, "lo"), Delta(0, finish_reason="stop")], fail_after)

    def stream_chat(self, *_args: Any, **_kwargs: Any) -> FakeStream:
        return self.stream

    def waiting(self, _target: ModelTarget) -> int:
        return 0


class FakeModels:
    def target(self, _org: str, name: str) -> ModelTarget:
        if name != "m":
            raise ModelNotFound(param="model")
        return ModelTarget(base_path=Path("/nowhere"))


def _payloads(service: InferenceService, **body: Any) -> list[Any]:
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    )

    async def collect() -> list[str]:
        return [payload async for payload in await service.chat_stream("org", request)]

    return [p if p == "[DONE]" else json.loads(p) for p in asyncio.run(collect())]


def test_stream_sequence_with_usage() -> None:
    engine = FakeEngine()
    payloads = _payloads(InferenceService(FakeModels(), engine), stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [p["choices"][0]["delta"].get("content") for p in payloads[1:3]] == ["Hel", "lo"]
    assert payloads[3]["choices"][0]["finish_reason"] == "stop"
    assert payloads[4]["choices"] == [] and payloads[4]["usage"]["total_tokens"] == 9
    assert all(p["usage"] is None for p in payloads[:4])
    assert payloads[-1] == "[DONE]" and engine.stream.closed


def test_failure_mid_stream_is_an_error_chunk_then_done() -> None:
    engine = FakeEngine(fail_after=1)
    payloads = _payloads(InferenceService(FakeModels(), engine), stream=True)  # type: ignore[arg-type]
    assert payloads[1]["choices"][0]["delta"]["content"] == "Hel"
    assert payloads[2]["error"]["type"] == "server_error" and "fell over" not in json.dumps(payloads[2])
    assert payloads[3] == "[DONE]" and len(payloads) == 4 and engine.stream.closed


def test_request_errors_raise_before_the_stream_exists() -> None:
    service = InferenceService(FakeModels(), FakeEngine())  # type: ignore[arg-type]
    request = ChatCompletionRequest.model_validate({"model": "other", "messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(ModelNotFound):
        asyncio.run(service.chat_stream("org", request))
