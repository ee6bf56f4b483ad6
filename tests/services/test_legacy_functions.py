"""The deprecated `functions` / `function_call` chat API: read as tools, answered in its own shape (issue 16)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from openft.errors import InvalidRequest
from openft.inference import ToolCall
from openft.protocol.chat import ChatCompletionRequest
from openft.services.inference import InferenceService
from tests.services.test_inference import Delta, FakeEngine, FakeModels, FakeStream

FUNCTIONS = [{"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALL = ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Paris"}')


class RecordingEngine(FakeEngine):
    """Answers with one tool call and keeps what the service asked for."""

    def __init__(self) -> None:
        self.stream = FakeStream([Delta(0, tool_calls=[CALL]), Delta(0, finish_reason="tool_calls")], None)
        self.asked: list[Any] = []

    def stream_chat(self, *args: Any, **kwargs: Any) -> FakeStream:
        self.asked.append(args)
        return self.stream


def _request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "Weather in Paris?"}], **body}
    )


def test_functions_reach_the_engine_as_tools_and_the_reply_is_a_function_call() -> None:
    engine = RecordingEngine()
    service = InferenceService(FakeModels(), engine)  # type: ignore[arg-type]
    reply = asyncio.run(service.chat("org", _request(functions=FUNCTIONS, function_call={"name": "get_weather"})))
    _target, _messages, params, tools = engine.asked[0]
    assert tools == [{"type": "function", "function": FUNCTIONS[0]}]
    assert params.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    wire = reply.model_dump()
    choice = wire["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert "tool_calls" not in choice["message"]


def test_tools_still_answer_with_tool_calls() -> None:
    service = InferenceService(FakeModels(), RecordingEngine())  # type: ignore[arg-type]
    tools = [{"type": "function", "function": FUNCTIONS[0]}]
    choice = asyncio.run(service.chat("org", _request(tools=tools))).model_dump()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and "function_call" not in choice["message"]
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_streamed_function_call_deltas() -> None:
    service = InferenceService(FakeModels(), RecordingEngine())  # type: ignore[arg-type]

    async def collect() -> list[str]:
        return [p async for p in await service.chat_stream("org", _request(functions=FUNCTIONS, stream=True))]

    payloads = [json.loads(p) for p in asyncio.run(collect())[:-1]]
    deltas = [p["choices"][0]["delta"] for p in payloads]
    assert {"function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}} in deltas
    assert not any("tool_calls" in delta for delta in deltas)
    assert payloads[-1]["choices"][0]["finish_reason"] == "function_call"


def test_old_function_turns_are_rendered_as_tool_turns() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": "{}"}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    rendered = InferenceService._messages(_request(functions=FUNCTIONS, messages=messages))
    call_id = rendered[1]["tool_calls"][0]["id"]
    assert rendered[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": "{}"}
    assert rendered[2] == {"role": "tool", "name": "get_weather", "content": "sunny", "tool_call_id": call_id}


def test_function_call_errors_name_the_deprecated_fields() -> None:
    with pytest.raises(InvalidRequest) as unknown:
        InferenceService._chat_params(_request(functions=FUNCTIONS, function_call={"name": "nope"}))
    assert unknown.value.param == "function_call"
    with pytest.raises(InvalidRequest) as alone:
        InferenceService._chat_params(_request(function_call="auto"))
    assert alone.value.param == "function_call"
    with pytest.raises(ValidationError):
        _request(functions=FUNCTIONS, tools=[{"type": "function", "function": FUNCTIONS[0]}])
