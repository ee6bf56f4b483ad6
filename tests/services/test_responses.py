"""The Responses API's translation to and from the chat path, with a model that answers with a function call
(the random tiny model of the e2e tests cannot be relied on to close one): the real ResponseService,
InferenceService and database, and the fake engine of tests/services/test_inference.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from openft.errors import InvalidRequest, OpenFTError
from openft.inference import ToolCall
from openft.protocol.responses import CreateResponseRequest, ResponseObject
from openft.services.background_responses import BackgroundResponses
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


# background responses ----------------------------------------------------------------------------------
class EndlessStream(FakeStream):
    """A generation that goes on (a delta every 20 ms, up to a minute) until it is cancelled."""

    def __init__(self) -> None:
        super().__init__([], None)

    async def _deltas_in_turn(self) -> AsyncIterator[Delta]:
        try:
            for _ in range(3000):
                if self.closed:
                    return
                await asyncio.sleep(0.02)
                yield Delta(0, "la ")
            yield Delta(0, finish_reason="stop")
        finally:
            self._end()


class EndlessEngine(FakeEngine):
    def __init__(self) -> None:
        self.streams: list[EndlessStream] = []

    def stream_chat(self, *_args: Any, **_kwargs: Any) -> FakeStream:
        self.streams.append(EndlessStream())
        return self.streams[-1]


def _background(container: Container, engine: FakeEngine, lease: int = 30) -> ResponseService:
    inference = InferenceService(FakeModels(), engine)  # type: ignore[arg-type]
    return ResponseService(container.sessions, inference, BackgroundResponses(container.sessions, lease))


async def _until(service: ResponseService, org: str, response_id: str, *statuses: str) -> ResponseObject:
    for _ in range(500):
        response = await asyncio.to_thread(service.retrieve, org, response_id)
        if response.status in statuses:
            return response
        await asyncio.sleep(0.02)
    raise AssertionError(f"{response_id} never became {statuses}: {response.status}")


def test_a_background_response_is_queued_then_answered(container: Container) -> None:
    service, org = _background(container, FakeEngine()), container.default_org_id

    async def run() -> tuple[ResponseObject, ResponseObject]:
        queued = await service.create(Caller.of("org"), org, _request(input="hi", background=True))
        return queued, await _until(service, org, queued.id, "completed")

    queued, done = asyncio.run(run())
    assert queued.status == "queued" and queued.background and queued.output == [] and queued.usage is None
    openapi_schemas.validate(queued.model_dump(mode="json"), "Response")
    assert done.background and done.output_text == "Hello" and done.usage is not None
    openapi_schemas.validate(done.model_dump(mode="json"), "Response")
    assert [i["type"] for i in service.input_items(org, done.id).data] == ["message"]
    with pytest.raises(InvalidRequest, match="completed") as bad:
        service.cancel(org, done.id)
    assert bad.value.param == "response_id"


def test_background_requests_that_cannot_be_served_are_refused_at_once(container: Container) -> None:
    service, org, who = _background(container, FakeEngine()), container.default_org_id, Caller.of("org")
    refusals = {
        "store": _request(input="hi", background=True, store=False),
        "stream": _request(input="hi", background=True, stream=True),
        "model": CreateResponseRequest.model_validate({"model": "nope", "input": "hi", "background": True}),
    }
    for param, request in refusals.items():
        with pytest.raises(OpenFTError) as refused:
            asyncio.run(service.create(who, org, request))
        assert refused.value.param == param
    plain = ResponseService(container.sessions, InferenceService(FakeModels(), FakeEngine()))  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as refused:  # a batch worker's answerer runs no background work
        asyncio.run(plain.create(who, org, _request(input="hi", background=True)))
    assert refused.value.param == "background"
    answered = asyncio.run(plain.create(who, org, _request(input="hi")))
    with pytest.raises(InvalidRequest, match="synchronous"):
        plain.cancel(org, answered.id)


def test_cancelling_stops_the_generation_here_and_from_another_server(container: Container) -> None:
    engine = EndlessEngine()
    here = _background(container, engine, lease=3)  # heartbeat every 0.5 s
    elsewhere = _background(container, FakeEngine())  # a second server on the same database
    org, who = container.default_org_id, Caller.of("org")

    async def run() -> list[ResponseObject]:
        first = await here.create(who, org, _request(input="sing", background=True))
        second = await here.create(who, org, _request(input="sing", background=True))
        await _until(here, org, first.id, "in_progress")
        await _until(here, org, second.id, "in_progress")
        with pytest.raises(InvalidRequest, match="still in_progress"):
            await here.create(who, org, _request(input="and?", previous_response_id=first.id))
        cancelled = [await asyncio.to_thread(here.cancel, org, first.id)]
        await asyncio.sleep(0.4)  # the generation polls its stop flag every 0.25 s
        assert engine.streams[0].closed and not engine.streams[1].closed  # stopped at once on its own server
        cancelled.append(await asyncio.to_thread(elsewhere.cancel, org, second.id))
        await asyncio.sleep(0.8)  # the runner's heartbeat reads the cancel within 0.5 s
        assert engine.streams[1].closed
        await asyncio.sleep(0.3)  # the runners are done: nothing overwrote the cancel
        cancelled += [await asyncio.to_thread(here.retrieve, org, r.id) for r in cancelled]
        cancelled.append(await asyncio.to_thread(here.cancel, org, first.id))  # again: the same answer
        return cancelled

    for response in asyncio.run(run()):
        assert response.status == "cancelled" and response.background
        openapi_schemas.validate(response.model_dump(mode="json"), "Response")


def test_a_dead_servers_background_response_fails_when_its_lease_runs_out(container: Container) -> None:
    org, who = container.default_org_id, Caller.of("org")
    dying = _background(container, EndlessEngine(), lease=3)

    async def start_then_die() -> str:
        response = await dying.create(who, org, _request(input="sing", background=True))
        await _until(dying, org, response.id, "in_progress")
        return response.id  # asyncio.run ends here: the loop and its running task are gone, like a killed server

    response_id = asyncio.run(start_then_die())
    survivor = _background(container, FakeEngine())
    assert survivor.retrieve(org, response_id).status == "in_progress"  # its lease still holds
    time.sleep(3.2)
    failed = survivor.retrieve(org, response_id)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert "stopped" in failed.error.message
    openapi_schemas.validate(failed.model_dump(mode="json"), "Response")


def test_a_graceful_stop_fails_the_running_background_responses(container: Container) -> None:
    engine = EndlessEngine()
    service, org = _background(container, engine), container.default_org_id

    async def run() -> str:
        response = await service.create(Caller.of("org"), org, _request(input="sing", background=True))
        await _until(service, org, response.id, "in_progress")
        await service.stop_background()
        return response.id

    failed = service.retrieve(org, asyncio.run(run()))
    assert failed.status == "failed" and failed.error is not None and "create it again" in failed.error.message
    assert engine.streams[0].closed
