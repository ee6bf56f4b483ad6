"""The Responses API's translation to and from the chat path, with a model that answers with a function call
(the random tiny model of the e2e tests cannot be relied on to close one): the real ResponseService,
InferenceService and database, and the fake engine of tests/services/test_inference.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openft.inference import ToolCall
from openft.protocol.responses import CreateResponseRequest, ResponseObject
from openft.services.container import Container, build_container
from openft.services.inference import InferenceService
from openft.services.models import Caller
from openft.services.responses import ResponseService
from openft.settings import Settings
from tests.services.test_inference import Delta, FakeEngine, FakeModels, FakeStream
from tests.support import openapi_schemas

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL = ToolCall(id="call_abc", name="get_weather", arguments='{"city": "Paris"}')


class CallingEngine(FakeEngine):
    """Answers each request with its next script (a tool call, then text) and keeps what it was asked."""

    def __init__(self) -> None:
        self.scripts = [
            [Delta(0, tool_calls=[CALL]), Delta(0, finish_reason="tool_calls")],
            [Delta(0, "Sunny, "), Delta(0, "21 C."), Delta(0, finish_reason="stop")],
        ]
        self.asked: list[Any] = []

    def stream_chat(self, *args: Any, **_kwargs: Any) -> FakeStream:
        self.asked.append(args)
        return FakeStream(self.scripts[(len(self.asked) - 1) % len(self.scripts)], None)


@pytest.fixture
def container(tmp_path: Path, models_dir: Path, database_url: str) -> Iterator[Container]:
    """A container for its database (SQLite and PostgreSQL: the JSON columns and migration 0011 on both)."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key="k", database_url=database_url)
    built = build_container(settings, with_worker=False)
    yield built
    built.engine.dispose()


def _request(**body: Any) -> CreateResponseRequest:
    return CreateResponseRequest.model_validate({"model": "m", **body})


def test_function_call_round_trip_through_previous_response_id(container: Container) -> None:
    engine = CallingEngine()
    service = ResponseService(container.sessions, InferenceService(FakeModels(), engine))  # type: ignore[arg-type]
    org, who = container.default_org_id, Caller.of("org")
    tool_choice = {"type": "function", "name": "get_weather"}
    first = asyncio.run(
        service.create(who, org, _request(input="Weather in Paris?", tools=[WEATHER], tool_choice=tool_choice))
    )
    _target, messages, params, tools = engine.asked[0]
    assert messages == [{"role": "user", "content": "Weather in Paris?"}]
    assert tools == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert params.tool_choice == {"type": "function", "function": {"name": "get_weather"}}
    [call] = first.output
    assert call["type"] == "function_call" and call["id"].startswith("fc_")
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_abc", "get_weather", '{"city": "Paris"}')
    openapi_schemas.validate(first.model_dump(mode="json"), "Response")

    output = {"type": "function_call_output", "call_id": "call_abc", "output": '{"temp_c": 21}'}
    second = asyncio.run(
        service.create(
            who, org, _request(previous_response_id=first.id, input=[output], instructions="Be brief.", tools=[WEATHER])
        )
    )
    assert engine.asked[1][1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 21}'},
    ]
    assert second.output_text == "Sunny, 21 C." and second.previous_response_id == first.id
    assert [i["type"] for i in service.input_items(org, second.id).data] == ["function_call_output"]
    assert service.retrieve(org, second.id) == second


def test_streamed_function_call_events(container: Container) -> None:
    engine = CallingEngine()
    service = ResponseService(container.sessions, InferenceService(FakeModels(), engine))  # type: ignore[arg-type]

    async def collect() -> list[dict[str, Any]]:
        events = await service.create_stream(
            Caller.of("org"), container.default_org_id, _request(input="Weather?", tools=[WEATHER], stream=True)
        )
        return [json.loads(event["data"]) async for event in events]

    events = asyncio.run(collect())
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    for event in events:
        openapi_schemas.validate(event, "ResponseStreamEvent")
    assert events[4]["arguments"] == '{"city": "Paris"}'
    final = events[-1]["response"]
    openapi_schemas.validate(final, "Response")
    assert final["output"] == [events[5]["item"]] and final["usage"]["input_tokens"] == FakeStream.prompt_tokens
    assert ResponseObject.model_validate(final) == service.retrieve(container.default_org_id, final["id"])


def test_streamed_text_events_match_openais_schemas(container: Container) -> None:
    service = ResponseService(container.sessions, InferenceService(FakeModels(), FakeEngine()))  # type: ignore[arg-type]

    async def collect() -> list[dict[str, Any]]:
        request = _request(input="hi", stream=True, store=False)
        events = await service.create_stream(Caller.of("org"), container.default_org_id, request)
        return [json.loads(event["data"]) async for event in events]

    events = asyncio.run(collect())
    for event in events:
        openapi_schemas.validate(event, "ResponseStreamEvent")
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Hel", "lo"]
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hello"
