"""Structured outputs: the schema checker alone, the engine decoding under it, and the vLLM backend's request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openft.errors import InvalidRequest
from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.inference.json_schema import SCHEMA_PARAM, JsonSchemaPrefix, compile_schema
from openft.inference.vllm_backend import VllmEngine
from tests.inference.test_vllm_backend import FakeVllm, Params

MESSAGES = [{"role": "user", "content": "Describe a person."}]

PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "admin": {"type": "boolean"},
        "role": {"enum": ["user", "owner", 3, None]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "nick": {"type": ["string", "null"]},
        "home": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/place"}]},
        "kind": {"const": "person"},
    },
    "required": ["name", "age", "score", "admin", "role", "tags", "nick", "home", "kind"],
    "additionalProperties": False,
    "$defs": {
        "place": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "inside": {"anyOf": [{"$ref": "#/$defs/place"}, {"type": "null"}]},
            },
            "required": ["city", "inside"],
            "additionalProperties": False,
        }
    },
}
VALID = (
    '{"name": "Ann \\"A\\" \\u00e9", "age": -3, "score": 1.5e-2, "admin": false, "role": null, "tags": ["a", "b"],'
    ' "nick": null, "home": {"city": "Oslo", "inside": {"city": "Norway", "inside": null}}, "kind": "person"}'
)


def check(text: str, schema: dict[str, Any] = PERSON) -> tuple[bool, int | None]:
    return JsonSchemaPrefix(compile_schema(schema), 32).feed(text)


# The checker ------------------------------------------------------------------------------------------------


def test_a_valid_instance_is_accepted_and_ends_at_its_closing_brace() -> None:
    assert check(VALID + " trailing") == (True, len(VALID))
    jsonschema.validate(json.loads(VALID), PERSON)
    for cut in range(len(VALID)):  # every prefix is a prefix
        assert check(VALID[:cut]) == (True, None)


@pytest.mark.parametrize(
    "prefix",
    [
        ' {"name"',  # whitespace before the object
        '{"nam"',  # a key that is not a property
        '{"name": 1',  # wrong type
        '{"name": "a", "name"',  # a repeated key
        '{"age": 1.5',  # integer
        '{"age": 1e3',
        '{"role": "admin"',  # not in the enum
        '{"role": 4',
        '{"kind": "people"',  # not the const
        '{"tags": ["a", "b", "c", "d"',  # maxItems
        '{"admin": tru,',
        '{"home": {"city": "x", "inside": 5',
        '{"name": "a"}',  # required properties missing
        '{"name": "a",}',
        "[",  # the root is an object
    ],
)
def test_a_prefix_that_leaves_the_schema_is_refused(prefix: str) -> None:
    assert check(prefix)[0] is False


def test_no_comma_once_every_property_is_given() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": [], "additionalProperties": False}
    assert check('{"a": 1}', schema) == (True, 8)
    assert check('{"a": 1,', schema)[0] is False
    assert check("{}", schema) == (True, 2)


def test_min_items_and_nested_untyped_values() -> None:
    schema = {
        "type": "object",
        "properties": {"xs": {"type": "array", "minItems": 2}, "any": {}},
        "required": ["xs", "any"],
        "additionalProperties": False,
    }
    assert check('{"xs": [1]', schema)[0] is False
    text = '{"xs": [1, {"k": [true, null, "s"]}], "any": {"free": [1.5]}}'
    assert check(text, schema) == (True, len(text))


def test_whitespace_runs_allow_pretty_printing_but_not_blank_pages() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "object", "properties": {"b": {"type": "null"}}, "additionalProperties": False}},
        "additionalProperties": False,
    }
    pretty = json.dumps({"a": {"b": None}}, indent=4)
    assert check(pretty, schema) == (True, len(pretty))
    assert check("{" + " " * 5 + '"a"', schema)[0] is True
    assert check("{" + " " * 6, schema)[0] is False  # four spaces of indent per level, and a line break
    assert check('{"a": {' + " " * 9 + '"b"', schema)[0] is True
    assert check('{"a": {' + " " * 10, schema)[0] is False


@pytest.mark.parametrize(
    ("schema", "pointer"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}, "additionalProperties": False},
            "/properties/a/pattern",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "format": "date"}},
                "additionalProperties": False,
            },
            "/properties/a/format",
        ),
        (
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "additionalProperties": False},
            "/properties/n/minimum",
        ),
        ({"type": "object", "properties": {}}, "/additionalProperties"),
        (
            {"type": "object", "properties": {"a": {"$ref": "http://x/y"}}, "additionalProperties": False},
            "/properties/a/$ref",
        ),
        (
            {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}, "additionalProperties": False},
            "/properties/a/$ref",
        ),
        ({"type": "object", "required": ["b"], "additionalProperties": False}, "/required"),
        ({"type": "array"}, ""),
        ({"type": "object", "allOf": [], "additionalProperties": False}, "/allOf"),
        ({"type": "object", "properties": {"a": {"enum": []}}, "additionalProperties": False}, "/properties/a/enum"),
    ],
)
def test_what_is_not_enforced_is_a_400_naming_its_pointer(schema: dict[str, Any], pointer: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        compile_schema(schema)
    assert caught.value.param == SCHEMA_PARAM
    assert f"'schema{pointer}'" in str(caught.value)


def test_generation_params_check_the_schema() -> None:
    with pytest.raises(InvalidRequest) as caught:
        GenerationParams(json_object=True, json_schema={"type": "object", "minProperties": 1})
    assert caught.value.param == SCHEMA_PARAM


# The engine -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine()


BOUNDED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "level": {"enum": ["low", "high", 3]},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
        "inner": {
            "type": "object",
            "properties": {"x": {"type": "null"}},
            "required": ["x"],
            "additionalProperties": False,
        },
        "maybe": {"anyOf": [{"type": "null"}, {"const": "yes"}]},
    },
    "required": ["ok", "level", "flags", "inner", "maybe"],
    "additionalProperties": False,
}


def test_replies_follow_the_schema(base: ModelTarget, engine: InferenceEngine) -> None:
    """The random tiny model never writes such JSON by itself. Under a schema whose instances are bounded,
    greedy and sampled replies end ("stop") valid; under one with free strings and numbers they may run out
    of tokens, and are then a prefix of a valid instance."""
    for seed in range(3):
        for schema, max_tokens in ((BOUNDED, 1000), (PERSON, 40)):
            params = GenerationParams(
                temperature=0 if seed == 0 else 1.0,
                max_tokens=max_tokens,
                seed=seed,
                json_object=True,
                json_schema=schema,
            )
            choice = engine.chat(base, MESSAGES, params).choices[0]
            assert choice.text is not None
            if schema is BOUNDED or choice.finish_reason == "stop":
                assert choice.finish_reason == "stop"
                jsonschema.validate(json.loads(choice.text), schema)
            else:
                assert check(choice.text, schema) == (True, None)


def test_a_model_that_wants_other_keys_is_held_to_the_schema(scripted: Any, base: ModelTarget) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "n": {"type": "integer"}},
        "required": ["city", "n"],
        "additionalProperties": False,
    }
    engine = scripted('{"city": "Paris", "extra": 2.5}')
    params = GenerationParams(temperature=0, max_tokens=60, json_object=True, json_schema=schema)
    choice = engine.chat(base, MESSAGES, params).choices[0]
    assert choice.text is not None and choice.text.startswith('{"city": "Paris", "n"')
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.text), schema)


# The vLLM backend -------------------------------------------------------------------------------------------


@pytest.fixture
def fake(base_dir: Path) -> FakeVllm:
    tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(base_dir)
    return FakeVllm(tokenizer)


@pytest.fixture
def vllm(fake: FakeVllm) -> Iterator[VllmEngine]:
    engine = VllmEngine(api=fake.api, max_models=2)
    yield engine
    engine.close()


def test_vllm_gets_the_schema_and_openfts_checker_still_runs(
    vllm: VllmEngine, fake: FakeVllm, base: ModelTarget
) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    fake.texts = ['{"n": 12} more']
    fake.chunk = 1
    params = GenerationParams(max_tokens=40, json_object=True, json_schema=schema)
    result = vllm.chat(base, MESSAGES, params)
    assert fake.requests[0].params.structured_outputs == Params(json=schema)
    assert result.choices[0].text == '{"n": 12}' and result.choices[0].finish_reason == "stop"
    fake.texts = ['{"n": 1.5}']  # what a looser grammar might let through: openft's rule ends it there
    choice = vllm.chat(base, MESSAGES, params).choices[0]
    assert choice.finish_reason == "length" and choice.text == '{"n": 1'
