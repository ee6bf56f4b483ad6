"""Chat datasets for tests: valid examples and every kind of malformed file, written as JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def qa_example(i: int) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You answer questions about the Zorblax kettle."},
            {"role": "user", "content": f"Question {i}: how fast does the kettle boil?"},
            {"role": "assistant", "content": f"Answer {i}: the Zorblax kettle boils water in 90 seconds."},
        ]
    }


def valid_examples(n: int = 12) -> list[dict[str, Any]]:
    return [qa_example(i) for i in range(n)]


def write_jsonl(path: Path, rows: list[Any], *, raw_lines: dict[int, bytes] | None = None) -> Path:
    """Write rows as JSONL; `raw_lines` replaces given 1-based lines with raw bytes (for broken lines)."""
    lines = [json.dumps(row, ensure_ascii=False).encode() for row in rows]
    for line_no, raw in (raw_lines or {}).items():
        lines[line_no - 1] = raw
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def jsonl_bytes(rows: list[Any]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def malformed_cases() -> dict[str, tuple[bytes, str, int | None]]:
    """name → (file bytes, expected job error code, expected first line number named in the message)."""
    good = valid_examples(12)

    def with_line(line: int, row: Any) -> bytes:
        rows: list[Any] = list(good)
        rows[line - 1] = row
        return jsonl_bytes(rows)

    no_assistant = {"messages": [{"role": "user", "content": "hi"}]}
    bad_role = {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
    bad_weight = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}
    missing_content = {"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}
    unknown_key = {
        "messages": [{"role": "user", "content": "x", "colour": "red"}, {"role": "assistant", "content": "y"}]
    }
    image = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
            {"role": "assistant", "content": "a cat"},
        ]
    }
    bad_tools = {"tools": [{"type": "function"}], **good[0]}
    only_weight_zero = {
        "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 0}]
    }
    lines = jsonl_bytes(good).split(b"\n")
    return {
        "not_json": (b"\n".join([*lines[:4], b"{not json", *lines[4:]]), "invalid_file_format", 5),
        "not_utf8": (b"\n".join([*lines[:6], b'{"messages": "\xff\xfe"}', *lines[6:]]), "invalid_encoding", 7),
        "not_an_object": (with_line(3, [1, 2, 3]), "invalid_file_format", 3),
        "missing_messages": (with_line(2, {"prompt": "a", "completion": "b"}), "invalid_file_format", 2),
        "empty_messages": (with_line(4, {"messages": []}), "invalid_file_format", 4),
        "no_assistant": (with_line(8, no_assistant), "invalid_file_format", 8),
        "only_weight_zero": (with_line(9, only_weight_zero), "invalid_file_format", 9),
        "bad_role": (with_line(6, bad_role), "invalid_file_format", 6),
        "bad_weight": (with_line(11, bad_weight), "invalid_file_format", 11),
        "missing_content": (with_line(1, missing_content), "invalid_file_format", 1),
        "unknown_message_key": (with_line(10, unknown_key), "invalid_file_format", 10),
        "image_content": (with_line(12, image), "invalid_file_format", 12),
        "bad_tools": (with_line(5, bad_tools), "invalid_file_format", 5),
        "dpo_data_in_sft_job": (with_line(3, {"input": {}, "preferred_output": []}), "invalid_file_format", 3),
        "too_few_examples": (jsonl_bytes(good[:9]), "invalid_n_examples", None),
        "empty_file": (b"", "invalid_n_examples", None),
    }


def preference_example(i: int) -> dict[str, Any]:
    """A DPO pair: the preferred answer states the fact, the rejected one dodges it."""
    return {
        "input": {"messages": [{"role": "user", "content": f"Question {i}: how fast does the Zorblax kettle boil?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Answer {i}: in 90 seconds."}],
        "non_preferred_output": [{"role": "assistant", "content": "I do not know."}],
    }


def preference_examples(n: int = 12) -> list[dict[str, Any]]:
    return [preference_example(i) for i in range(n)]
