"""Structured outputs through the official SDK: a strict json_schema is followed while decoding, `parse` gives
back the pydantic model, and what openft would not enforce is a 400 naming where it is in the schema."""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel, ConfigDict

from tests.conftest import TINY_MODEL_NAME

MESSAGES: list[Any] = [{"role": "user", "content": "Report the status."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "level": {"enum": ["low", "high", 3]},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        "inner": {"$ref": "#/$defs/inner"},
        "maybe": {"anyOf": [{"type": "null"}, {"const": "yes"}]},
    },
    "required": ["ok", "level", "flags", "inner", "maybe"],
    "additionalProperties": False,
    "$defs": {
        "inner": {
            "type": "object",
            "properties": {"x": {"type": "null"}},
            "required": ["x"],
            "additionalProperties": False,
        }
    },
}


def test_a_strict_schema_is_followed_where_the_model_alone_writes_no_such_json(client: OpenAI) -> None:
    free = client.chat.completions.create(model=TINY_MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=40)
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free.choices[0].message.content or ""), SCHEMA)
    reply = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=MESSAGES,
        temperature=0,
        max_tokens=1000,
        response_format={"type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA, "strict": True}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", (choice.message.content, reply.usage)
    jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
    stream = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=MESSAGES,
        temperature=0,
        max_tokens=1000,
        response_format={"type": "json_schema", "json_schema": {"name": "status", "schema": SCHEMA, "strict": True}},
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == choice.message.content  # the same reply, streamed


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x: None


class Status(BaseModel):
    ok: bool
    level: Literal["low", "high"]
    inner: Inner
    maybe: Literal["yes"] | None


def test_parse_returns_the_pydantic_model(client: OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=TINY_MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=1000, response_format=Status
    )
    message = completion.choices[0].message
    assert isinstance(message.parsed, Status)
    assert Status.model_validate_json(message.content or "") == message.parsed


def test_keywords_that_are_not_enforced_are_a_400(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}},
        "required": ["code"],
        "additionalProperties": False,
    }
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=TINY_MODEL_NAME,
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema, "strict": True}},
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "response_format.json_schema.schema"
    assert "'schema/properties/code/pattern'" in error["message"]


def test_a_schema_that_is_not_strict_only_asks_for_a_json_object(client: OpenAI) -> None:
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]+$"}}}
    reply = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=MESSAGES,
        temperature=0,
        max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert (reply.choices[0].message.content or "").startswith("{")
