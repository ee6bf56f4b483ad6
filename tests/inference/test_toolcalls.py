"""Tool calls as text: what the trainer writes (`openft.datasets.toolcalls`) is what inference reads back
(`openft.inference.toolcall_parser`); the JSON checker both use (`openft.inference.json_prefix`)."""

from __future__ import annotations

import json
import random

import pytest

from openft.datasets.toolcalls import render_tool_calls_as_text
from openft.inference.json_prefix import JsonObjectPrefix
from openft.inference.toolcall_parser import TextToolCall, ToolCallParser, parse_tool_calls_from_text
from openft.training.data import template_messages

WEATHER = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TIME = {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}


@pytest.mark.parametrize("content", ["", "Let me check.", "Two\nlines."])
def test_what_the_trainer_renders_parses_back(content: str) -> None:
    message = {"role": "assistant", "content": content or None, "tool_calls": [WEATHER, TIME], "weight": 1}
    (rendered,) = template_messages([message], native_tool_calls=False)
    assert rendered["content"] == render_tool_calls_as_text(content, [WEATHER, TIME])
    assert parse_tool_calls_from_text(rendered["content"]) == (
        content,
        [TextToolCall("get_weather", '{"city": "Paris"}'), TextToolCall("get_time", "{}")],
    )


def test_native_templates_get_call_objects() -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [WEATHER]}
    (rendered,) = template_messages([message], native_tool_calls=True)
    assert rendered["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert rendered["content"] == ""


@pytest.mark.parametrize(
    ("text", "content", "calls"),
    [
        ('<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>', "", [("f", '{"x": 1}')]),
        ('Hi <tool_call>{"name": "f", "arguments": {}}</tool_call> bye', "Hi  bye", [("f", "{}")]),
        ('<tool_call>{"name": "f", "arguments": {"x": 1}}', "", [("f", '{"x": 1}')]),  # cut before </tool_call>
        ('<tool_call>{"name": "f", "arguments": {"x": 1}', '<tool_call>{"name": "f", "arguments": {"x": 1}', []),
        ('{\n  "name": "f",\n  "arguments": {"x": [1, 2]}\n}', "", [("f", '{"x": [1, 2]}')]),  # spans lines
        ('  {"name": "f", "parameters": {"y": "z"}}  \nafter', "after", [("f", '{"y": "z"}')]),
        ('{"name": "f", "arguments": "raw text"}', "", [("f", "raw text")]),
        ('{"name": "f"}', "", [("f", "{}")]),
        ('{"name": "f", "arguments": {}} and more', '{"name": "f", "arguments": {}} and more', []),
        ('see {"name": "f", "arguments": {}}', 'see {"name": "f", "arguments": {}}', []),
        ('{"name": 3, "arguments": {}}', '{"name": 3, "arguments": {}}', []),
        ("{not json}\nok", "{not json}\nok", []),
        ('{"name": "g", "arguments": {}}', '{"name": "g", "arguments": {}}', []),  # not one of the tools
    ],
)
def test_parse_both_formats(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    assert parse_tool_calls_from_text(text, names={"f"}) == (content, [TextToolCall(*c) for c in calls])


SAMPLES = [
    'Let me check.\n{"name": "f", "arguments": {"city": "Paris"}}\n{"name": "g", "arguments": {}}',
    'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": [1, 2.5e3, true, null]}}\n</tool_call>\nDone <tool',
    '{"name": "x"} trailing\n{bad\n  {"name": "f",\n "arguments": {}}  \nend\n\n',
    "a\n\n  b <tool_call x <tool_call>{}</tool_call>ok\n{",
    'Grüße {"name": "f"}\n{"name": "f", "arguments": {"s": "}\\"{"}}',
]


@pytest.mark.parametrize("text", SAMPLES)
def test_settled_deltas_extend_to_the_one_shot_parse(text: str) -> None:
    """Fed every prefix in turn (as a stream is), then finished at any point."""
    for end in range(len(text) + 1):
        parser, settled = ToolCallParser({"f", "g"}), ""
        for size in range(end + 1):
            settled += parser.settled_delta(text[:size])
        content, calls = parser.finish(text[:end])
        assert content.startswith(settled)
        assert (content, calls) == parse_tool_calls_from_text(text[:end], {"f", "g"})


def _random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.random()
    if depth > 3 or kind < 0.4:
        return rng.choice([0, -1, 12.5, -0.25e-7, 1e300, True, False, None, "", 'q"\\/\b\f\n\r\t\u00e9\u2028😀'])
    if kind < 0.7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {f"k{i}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))}


def test_json_object_prefix_agrees_with_the_json_module() -> None:
    rng = random.Random(0)
    for _ in range(300):
        text = json.dumps({"v": _random_value(rng)}, indent=rng.choice([None, 2]), ensure_ascii=rng.random() < 0.5)
        for size in range(len(text)):
            assert JsonObjectPrefix().feed(text[:size]) == (True, None), text[:size]
        assert JsonObjectPrefix().feed(text + "\ntail") == (True, len(text))
        position = rng.randrange(len(text))
        mutated = text[:position] + rng.choice('{}[]",:x0 -.eE\\\n') + text[position + 1 :]
        ok, closed_at = JsonObjectPrefix().feed(mutated)
        if ok and closed_at is not None:
            assert isinstance(json.loads(mutated[:closed_at]), dict)
        try:
            valid = isinstance(json.loads(mutated), dict) and mutated[0] == "{" and mutated == mutated.rstrip()
        except ValueError:
            valid = False
        if valid:
            assert (ok, closed_at) == (True, len(mutated))


@pytest.mark.parametrize("text", [" {}", "[]", '{"a" 1}', '{"a": 01}', '{"a": tru}x', '{"a": "\x01"}', '{"a": 1,}'])
def test_json_object_prefix_refuses(text: str) -> None:
    assert JsonObjectPrefix().feed(text)[0] is False


def test_json_object_prefix_caps_whitespace_runs() -> None:
    assert JsonObjectPrefix(max_whitespace=3).feed("{   " + '"a": 1}') == (True, 11)
    assert JsonObjectPrefix(max_whitespace=3).feed("{    ")[0] is False
    assert JsonObjectPrefix(max_whitespace=3).feed('{"a     b": 1}') == (True, 14)  # inside strings: any
