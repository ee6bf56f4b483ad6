"""Preference (DPO) fine-tuning data (JSONL, one example per line) as OpenAI and Azure define it
(docs/api-compatibility.md §5).

    {"input": {"messages": [...], "tools"?: [...], "parallel_tool_calls"?: bool},
     "preferred_output": [assistant message], "non_preferred_output": [assistant message]}

The pre-2025 OpenAI names `preferred_completion` / `non_preferred_completion` are accepted too. Each output
holds exactly one assistant message (OpenAI's `maxItems: 1`; Azure only says "assistant or tool messages,
with an assistant one", and one assistant message satisfies both).

Built on the chat validator's pieces (line reader, message and tool checks, report builder), so a message
that chat data rejects is rejected here with the same words, and errors carry the same codes and 1-based
line numbers. Like `chat.py`, validation and reading share one parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.datasets.chat import (
    MIN_EXAMPLES,
    DataFormatError,
    Problem,
    ValidationReport,
    build_report,
    collect_examples,
    iter_parsed,
    parse_message,
    parse_tool_fields,
)

__all__ = [
    "DataFormatError",
    "PreferenceExample",
    "parse_preference_example",
    "read_preference_examples",
    "validate_preference_file",
]

OUTPUT_FIELDS = {
    "preferred": ("preferred_output", "preferred_completion"),
    "non_preferred": ("non_preferred_output", "non_preferred_completion"),
}
"""The field names of each output: the current one first, then the pre-2025 OpenAI one."""


@dataclass
class PreferenceExample:
    """A normalized pair: the prompt (chat-normalized: text content, developer → system) and two answers.

    Messages carry no `weight`: the prompt is never trained on and both answers always are, so a weight
    would mean nothing (OpenAI's schema allows one on input assistant messages; it is dropped).
    """

    line: int
    prompt_messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    chosen: dict[str, Any]
    rejected: dict[str, Any]


def _without_weight(message: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in message.items() if key != "weight"}


def _parse_output(obj: dict[str, Any], side: str, problems: list[Problem], line: int) -> dict[str, Any] | None:
    """The one assistant message of `preferred_output` (side `preferred`) or `non_preferred_output`."""
    present = [name for name in OUTPUT_FIELDS[side] if name in obj]
    if not present:
        current, older = OUTPUT_FIELDS[side]
        problems.append(Problem(line, "missing_preference_output", f'missing "{current}" (or the older "{older}")'))
        return None
    if len(present) > 1:
        problems.append(Problem(line, "message_format", f"{' and '.join(present)} name the same output; give one"))
        return None
    name = present[0]
    value = obj[name]
    if not isinstance(value, list) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, list) else type(value).__name__
        problems.append(
            Problem(line, "message_format", f"{name} must be a list of exactly one assistant message, got {got}")
        )
        return None
    texts: list[str] = []
    message = parse_message(0, value[0], texts)
    if message is not None and message["role"] != "assistant":
        texts.append(f"message 1 has role {message['role']!r}; an output must be an assistant message")
    if isinstance(value[0], dict) and "weight" in value[0]:
        texts.append("message 1 has a weight; an output is always trained on, so it takes none")
    problems.extend(Problem(line, "message_format", f"{name} {text}") for text in texts)
    return None if texts or message is None else _without_weight(message)


def parse_preference_example(obj: Any, line: int) -> tuple[PreferenceExample | None, list[Problem]]:
    """Check one decoded JSON line; return the normalized example and the problems found."""
    if not isinstance(obj, dict):
        return None, [Problem(line, "data_type", f"each line must be a JSON object, got {type(obj).__name__}")]
    if "input" not in obj:
        if "messages" in obj:
            text = "this is supervised chat data; a dpo job needs input/preferred_output/non_preferred_output"
        else:
            text = 'missing the "input" object (a dpo job needs input/preferred_output/non_preferred_output)'
        return None, [Problem(line, "missing_messages_list", text)]
    raw_input = obj["input"]
    if not isinstance(raw_input, dict) or not isinstance(raw_input.get("messages"), list) or not raw_input["messages"]:
        return None, [
            Problem(line, "missing_messages_list", '"input" must be an object with a non-empty "messages" list')
        ]

    texts: list[str] = []
    prompt = [parse_message(i, m, texts) for i, m in enumerate(raw_input["messages"])]
    tools = parse_tool_fields(raw_input, texts)
    last = prompt[-1]
    if last is not None and last["role"] == "assistant":
        texts.append(
            f"message {len(prompt)} (assistant) is the last one; the outputs answer the input, "
            "so it must not end with an assistant message"
        )
    problems = [Problem(line, "message_format", f"input {text}") for text in texts]
    chosen = _parse_output(obj, "preferred", problems, line)
    rejected = _parse_output(obj, "non_preferred", problems, line)
    if problems:
        return None, problems
    assert chosen is not None and rejected is not None
    messages = [_without_weight(m) for m in prompt if m is not None]
    return PreferenceExample(line=line, prompt_messages=messages, tools=tools, chosen=chosen, rejected=rejected), []


def validate_preference_file(
    path: Path, *, min_examples: int = MIN_EXAMPLES, max_problems: int = 20
) -> ValidationReport:
    """Check a whole DPO file; at most `max_problems` problems are kept (all are counted)."""
    parsed = iter_parsed(Path(path), parse_preference_example)
    return build_report(parsed, min_examples=min_examples, max_problems=max_problems)


def read_preference_examples(path: Path) -> list[PreferenceExample]:
    """All examples of a valid DPO file; raises `DataFormatError` on the first problem."""
    return collect_examples(iter_parsed(Path(path), parse_preference_example))
