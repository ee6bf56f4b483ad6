"""Reinforcement fine-tuning (RFT) data (JSONL, one task per line) as OpenAI defines it.

    {"messages": [{"role": "user", "content": "What is 2 + 3? Answer with the number."}], "answer": "5"}

`messages` is the prompt the model answers (it must not end with an assistant message: the model writes
that one); every other field is the grader's `item` (`{{ item.answer }}`), kept as given. The messages are
checked by the chat validator's rules (`chat.parse_message`), so a message chat data rejects is rejected here
with the same words, codes and 1-based line numbers.
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

__all__ = ["DataFormatError", "RftTask", "parse_rft_task", "read_rft_tasks", "validate_rft_file"]


@dataclass
class RftTask:
    """One prompt to sample answers for, and the line as the grader's `item`."""

    line: int
    prompt_messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    item: dict[str, Any]


def parse_rft_task(obj: Any, line: int) -> tuple[RftTask | None, list[Problem]]:
    """Check one decoded JSON line; return the task and the problems found."""
    if not isinstance(obj, dict):
        return None, [Problem(line, "data_type", f"each line must be a JSON object, got {type(obj).__name__}")]
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        text = '"messages" must be a non-empty list' if "messages" in obj else 'missing the "messages" list'
        if "preferred_output" in obj or "input" in obj:
            text = 'this is preference (DPO) data; a reinforcement job needs a "messages" prompt'
        return None, [Problem(line, "missing_messages_list", text)]
    texts: list[str] = []
    messages = [parse_message(i, m, texts) for i, m in enumerate(raw)]
    tools = parse_tool_fields(obj, texts)
    last = messages[-1]
    if last is not None and last["role"] == "assistant":
        texts.append(
            f"message {len(messages)} (assistant) is the last one; the model writes the answer, "
            "so the prompt must not end with an assistant message"
        )
    if texts:
        return None, [Problem(line, "message_format", t) for t in texts]
    prompt = [{k: v for k, v in m.items() if k != "weight"} for m in messages if m is not None]
    return RftTask(line=line, prompt_messages=prompt, tools=tools, item=obj), []


def validate_rft_file(path: Path, *, min_examples: int = MIN_EXAMPLES, max_problems: int = 20) -> ValidationReport:
    """Check a whole RFT file; at most `max_problems` problems are kept (all are counted)."""
    return build_report(iter_parsed(Path(path), parse_rft_task), min_examples=min_examples, max_problems=max_problems)


def read_rft_tasks(path: Path) -> list[RftTask]:
    """All tasks of a valid RFT file; raises `DataFormatError` on the first problem."""
    return collect_examples(iter_parsed(Path(path), parse_rft_task))
