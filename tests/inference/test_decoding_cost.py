"""Decoding work per token is proportional to the new text, not to the reply so far.

The tool-call parser used to rescan a call that was still forming from its start on every token, and
stop strings were searched again over their whole length (their prefixes squared, for the text held
back): one n=8 request cost ~26 CPU-minutes. These tests count the characters examined, never time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest

from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.inference.json_prefix import JsonObjectPrefix
from openft.inference.stops import StopMatcher
from openft.inference.toolcall_parser import ToolCallParser, parse_tool_calls_from_text

CALL = '{"name": "f", "arguments": {"text": "' + "word " * 4000 + '"}}'
REPLIES = {
    "json line": "Sure.\n" + CALL + "\nDone.",
    "hermes block": "Sure.\n<tool_call>\n" + CALL + "\n</tool_call>\nDone.",
    "unclosed hermes": "<tool_call>" + "x " * 10000,
    "blank line": "a\n" + " \t" * 10000 + "b",
    "plain text": "no calls here, just words " * 800,
}


@pytest.fixture
def json_chars_fed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Characters given to the incremental JSON checker, which the parser runs over a forming call."""
    fed = [0]
    original = JsonObjectPrefix.feed

    def counting(self: JsonObjectPrefix, text: str) -> tuple[bool, int | None]:
        fed[0] += len(text)
        return original(self, text)

    monkeypatch.setattr(JsonObjectPrefix, "feed", counting)
    yield fed


STEP = 3
"""Characters per token in these tests."""


def _stream(parser: ToolCallParser, text: str) -> str:
    """Feed `text` a few characters at a time, as tokens arrive; returns the content deltas joined."""
    return "".join(parser.settled_delta(text, end) for end in range(0, len(text) + 1, STEP))


@pytest.mark.parametrize("name", list(REPLIES))
def test_the_tool_call_parser_looks_at_each_character_a_bounded_number_of_times(
    name: str, json_chars_fed: list[int]
) -> None:
    text = REPLIES[name]
    parser = ToolCallParser({"f"})
    streamed = _stream(parser, text)
    content, calls = parser.finish(text)
    assert content.startswith(streamed)
    assert (content, calls) == parse_tool_calls_from_text(text, {"f"})  # the same answer as the one-shot parse
    assert json_chars_fed[0] <= 2 * len(text)  # the forming call is checked once, not once per token
    calls = len(text) // STEP + 2
    # Linear: a few looks per character, plus a constant per call (a search resumes a tag's length back).
    # Rescanning the forming call on every token, as before, would be ~calls × len(text) / 2.
    assert parser.scanned <= 4 * len(text) + 30 * calls


def test_stop_strings_cost_the_new_text_only() -> None:
    stops = ["x" * 255 + "!", "y" * 200, "ab" * 100 + "c", "zz"]
    matcher = StopMatcher(stops)
    text = "x" * 20000 + "ab" * 5000  # keeps almost matching the first and third stop strings
    for start in range(0, len(text), 4):
        assert matcher.feed(text, start, min(start + 4, len(text))) is None
    assert matcher.examined == len(stops) * len(text)
    assert matcher.held == 200  # "abab…ab" may still become the third stop string
    assert matcher.feed(text + "c", len(text), len(text) + 1) == len(text) - 200


def test_the_earliest_stop_string_wins_across_stop_strings() -> None:
    matcher = StopMatcher(["cd", "bcde", ""])
    assert matcher.feed("abcdef", 0, 3) is None and matcher.held == 2  # "bc" starts "bcde"
    assert matcher.feed("abcdef", 3, 6) == 1  # "bcde" starts before "cd"


@pytest.fixture
def tool_call_reply(scripted: Callable[..., InferenceEngine], base_dir: object) -> Callable[[], str]:
    reply = '{"name": "f", "arguments": {"text": "' + "hello " * 150 + '"}}'
    engine = scripted(reply)
    target = ModelTarget(base_path=base_dir)  # type: ignore[arg-type]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]

    def run() -> str:
        result = engine.chat(
            target, [{"role": "user", "content": "go"}], GenerationParams(temperature=0, max_tokens=480), tools=tools
        )
        (choice,) = result.choices
        assert choice.finish_reason == "tool_calls" and choice.tool_calls is not None
        assert json.loads(choice.tool_calls[0].arguments) == {"text": "hello " * 150}
        return reply

    return run


def test_a_long_tool_call_is_parsed_once_while_it_is_generated(
    tool_call_reply: Callable[[], str], json_chars_fed: list[int]
) -> None:
    """Hundreds of tokens inside one forming call: the checker sees each character about once (before, it saw
    the whole call again on every token: ~tokens × length / 2 characters)."""
    reply = tool_call_reply()
    assert json_chars_fed[0] <= 2 * len(reply)
