"""The Responses API through the official SDK on a real server: create (plain and streamed), a function tool
round trip with previous_response_id, stored responses (retrieve, input items, delete, another organization's
404) and the errors a client meets. Answers are checked against OpenAI's published `Response` schema."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import DIALECTS
from tests.e2e.test_tenancy import keys_cli, sdk
from tests.support import openapi_schemas
from tests.support.server import RunningServer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def _raw(client: OpenAI, path: str) -> Any:
    """The wire JSON of a GET (the SDK's models add fields of their own when dumped)."""
    return client.get(path, cast_to=object)


def test_create_stream_and_retrieve(client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=TINY_MODEL_NAME,
        input="How fast does the Zorblax kettle boil?",
        instructions="Answer briefly.",
        temperature=0,
        max_output_tokens=12,
        metadata={"k": "v"},
    )
    openapi_schemas.validate(raw.http_response.json(), "Response")
    created = raw.parse()
    assert created.id.startswith("resp_") and created.object == "response"
    assert created.status in ("completed", "incomplete")
    assert created.output[0].type == "message" and created.output[0].id.startswith("msg_")
    assert created.output_text
    assert created.usage is not None and 0 < created.usage.output_tokens <= 12
    assert created.usage.total_tokens == created.usage.input_tokens + created.usage.output_tokens
    assert created.metadata == {"k": "v"} and created.instructions == "Answer briefly."
    stored = _raw(client, f"/responses/{created.id}")
    openapi_schemas.validate(stored, "Response")
    assert stored == raw.http_response.json()
    assert client.responses.retrieve(created.id).output_text == created.output_text

    items = client.responses.input_items.list(created.id, order="asc")
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].role == "user"  # type: ignore[union-attr]
    openapi_schemas.validate(_raw(client, f"/responses/{created.id}/input_items"), "ResponseItemList")

    # streamed, the SDK's helper: the same greedy text, events in OpenAI's order with sequence numbers
    kwargs: dict[str, Any] = {
        "model": TINY_MODEL_NAME,
        "input": "How fast does the Zorblax kettle boil?",
        "instructions": "Answer briefly.",
        "temperature": 0,
        "max_output_tokens": 12,
    }
    with client.responses.stream(**kwargs) as stream:
        events = list(stream)
    # a reply cut at max_output_tokens ends with response.incomplete, as OpenAI's does (the SDK's
    # get_final_response() only accepts response.completed), so the final response is read from the last event
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == created.status
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] == ("response.completed" if created.status == "completed" else "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == created.output_text
    assert client.responses.retrieve(final.id).output_text == created.output_text

    # create(stream=True) gives the same events
    raw_events = list(client.responses.create(stream=True, **kwargs))
    assert [e.type for e in raw_events] == kinds

    # store: false keeps nothing
    unstored = client.responses.create(store=False, **kwargs)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)

    # delete
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(created.id)


def test_function_call_items_and_previous_response_id(client: OpenAI) -> None:
    """The client's own function_call and function_call_output items reach the model, and a follow-up with
    previous_response_id carries the whole exchange. (That the model's own tool calls come back as
    function_call items is tests/services/test_responses.py's: the random tiny model never closes a call.)"""
    first = client.responses.create(
        model=TINY_MODEL_NAME,
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": '{"temp_c": 21}'},
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        temperature=0,
        max_output_tokens=4,
    )
    openapi_schemas.validate(_raw(client, f"/responses/{first.id}"), "Response")
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    items = client.responses.input_items.list(first.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].id.startswith("fc_") and items[1].call_id == "call_1"  # type: ignore[union-attr]
    openapi_schemas.validate(_raw(client, f"/responses/{first.id}/input_items"), "ResponseItemList")

    second = client.responses.create(
        model=TINY_MODEL_NAME, previous_response_id=first.id, input="And tomorrow?", temperature=0, max_output_tokens=4
    )
    assert second.previous_response_id == first.id and second.output_text
    # the prompt carried the first exchange and its answer
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert [i.type for i in client.responses.input_items.list(second.id).data] == ["message"]


class Status(BaseModel):
    ok: bool
    level: Literal["low", "high"]  # no free string: the random model would not end one


def test_text_format_json_schema_is_chat_structured_output(client: OpenAI) -> None:
    """`responses.parse(text_format=…)` sends a strict json_schema text.format, which chat's response_format
    enforces while decoding; the SDK parses the output text back into the model."""
    parsed = client.responses.parse(
        model=TINY_MODEL_NAME, input="Report the status.", text_format=Status, temperature=0, max_output_tokens=1000
    )
    assert parsed.status == "completed", parsed.output_text
    assert isinstance(parsed.output_parsed, Status)
    assert parsed.text is not None and parsed.text.format.type == "json_schema"


def test_background_response_polled_to_the_end_and_one_cancelled(client: OpenAI) -> None:
    queued = client.responses.with_raw_response.create(
        model=TINY_MODEL_NAME, input="Tell me about kettles.", max_output_tokens=8, background=True
    )
    openapi_schemas.validate(queued.http_response.json(), "Response")
    started = queued.parse()
    assert started.background and started.status in ("queued", "in_progress") and started.output == []
    for _ in range(300):
        done = client.responses.retrieve(started.id)
        if done.status not in ("queued", "in_progress"):
            break
        time.sleep(0.1)
    assert done.status in ("completed", "incomplete") and done.output_text and done.usage is not None
    openapi_schemas.validate(_raw(client, f"/responses/{started.id}"), "Response")
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.cancel(started.id)
    assert bad.value.body["param"] == "response_id"  # type: ignore[index]

    long = client.responses.create(model=TINY_MODEL_NAME, input="Sing.", max_output_tokens=4000, background=True)
    cancelled = client.responses.cancel(long.id)
    assert cancelled.status == "cancelled" and cancelled.id == long.id
    time.sleep(0.5)  # its generation stopped; nothing overwrote the cancel
    assert client.responses.retrieve(long.id).status == "cancelled"
    assert client.responses.cancel(long.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.cancel(client.responses.create(model=TINY_MODEL_NAME, input="hi", max_output_tokens=2).id)
    assert "synchronous" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=TINY_MODEL_NAME, input="hi", background=True, store=False)
    assert bad.value.body["param"] == "store"  # type: ignore[index]


@pytest.mark.parametrize("dialect", [d for d in DIALECTS if d != "openai"])
def test_other_dialects(client_for: Callable[[str], OpenAI], dialect: str) -> None:
    client = client_for(dialect)
    created = client.responses.create(model=TINY_MODEL_NAME, input="hi", max_output_tokens=2)
    assert client.responses.retrieve(created.id).output_text == created.output_text


def test_errors_and_other_organizations(server: RunningServer, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model=TINY_MODEL_NAME, input="hi", tools=[{"type": "web_search"}])
    assert bad.value.body["param"] == "tools[0].type"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(
            model=TINY_MODEL_NAME, input=[{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]
        )
    assert bad.value.body["param"] == "input[0].content[0].type"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model=TINY_MODEL_NAME, input="hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="no-such-model", input="hi")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]

    mine = client.responses.create(model=TINY_MODEL_NAME, input="hi", max_output_tokens=2)
    other = sdk(server, keys_cli(server, "create", "--org", "responses-other")["key"])
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(mine.id)
    with pytest.raises(openai.NotFoundError) as foreign:
        other.responses.create(model=TINY_MODEL_NAME, input="hi", previous_response_id=mine.id)
    assert foreign.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert client.responses.retrieve(mine.id).id == mine.id
