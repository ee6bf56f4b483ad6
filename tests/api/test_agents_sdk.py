"""The OpenAI Agents SDK's Responses model (`OpenAIResponsesModel`) against openft's Responses API: an agent
with a function tool makes the call, the SDK runs the tool and sends its output back as a
`function_call_output` item, and the model answers — plain and streamed.

The server is the real app, ResponseService and InferenceService over HTTP (httpx's ASGI transport); only the
generation is scripted (tests/services/test_responses.py's CallingEngine: a tool call, then text), because a
random tiny model never closes a tool call or ends a reply, and the Agents SDK rightly treats an `incomplete`
response as an error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from openft.api.app import create_app
from openft.services.container import Container, build_container
from openft.services.inference import InferenceService
from openft.services.responses import ResponseService
from openft.settings import Settings
from tests.services.test_inference import FakeModels
from tests.services.test_responses import CallingEngine


@pytest.fixture
def container(tmp_path: Path, models_dir: Path) -> Iterator[Container]:
    built = build_container(Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key="k"), with_worker=False)
    yield built
    built.engine.dispose()


def _model(container: Container, engine: CallingEngine) -> OpenAIResponsesModel:
    container.responses = ResponseService(container.sessions, InferenceService(FakeModels(), engine))  # type: ignore[arg-type]
    app = create_app(container=container)
    app.state.container = container  # the ASGI transport runs no lifespan
    transport = httpx.ASGITransport(app=app)
    client = openai.AsyncOpenAI(
        base_url="http://openft/v1", api_key="k", max_retries=0, http_client=httpx.AsyncClient(transport=transport)
    )
    return OpenAIResponsesModel(model="m", openai_client=client)


def test_an_agent_calls_a_tool_and_answers_through_openft(container: Container) -> None:
    set_tracing_disabled(True)  # traces would go to OpenAI's servers
    called: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return '{"temp_c": 21}'

    engine = CallingEngine()
    agent = Agent(name="forecaster", instructions="Be brief.", model=_model(container, engine), tools=[get_weather])

    async def run() -> tuple[Any, Any]:
        plain = await Runner.run(agent, "Weather in Paris?", max_turns=3)
        streamed = Runner.run_streamed(agent, "Weather in Paris?", max_turns=3)
        kinds = [event.type async for event in streamed.stream_events()]
        assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
        return plain, streamed

    plain, streamed = asyncio.run(run())
    assert called == ["Paris", "Paris"]  # the SDK ran the tool once per run
    for result in (plain, streamed):
        kinds = [item.type for item in result.new_items]
        assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
        assert result.final_output == "Sunny, 21 C."
    _target, messages, _params, tools = engine.asked[1]  # the second turn saw the call and the tool's output
    assert tools[0]["function"]["name"] == "get_weather"
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp_c": 21}'}
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
