from __future__ import annotations

import json
from pathlib import Path

import pytest

from openft.datasets import chat
from tests.support.data import malformed_cases, valid_examples, write_jsonl

CASES = malformed_cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_malformed_file_is_reported_with_code_and_line(tmp_path: Path, name: str) -> None:
    content, code, line = CASES[name]
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    report = chat.validate_file(path)
    assert not report.ok
    assert report.code == code
    first = report.problems[0]
    assert first.line == line
    if line is not None:
        assert f"line {line}:" in report.summary()
    with pytest.raises(chat.DataFormatError) if line is not None else _no_raise():
        chat.read_examples(path)


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


def test_valid_file_with_bom_blank_lines_and_multi_turn(tmp_path: Path) -> None:
    rows = valid_examples(10)
    rows[0]["messages"] += [
        {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "now?"}]},
        {"role": "assistant", "content": "still 90 seconds", "weight": 0},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\n\n", 1))
    report = chat.validate_file(path)
    assert report.ok, report.summary()
    assert report.n_examples == 10
    examples = chat.read_examples(path)
    assert examples[0].messages[3]["content"] == "and now?"
    assert examples[0].messages[4]["weight"] == 0
    assert examples[0].messages[2]["weight"] == 1
    assert examples[1].line == 3  # the blank line after line 1 still counts


def test_tool_calls_and_tools_are_accepted_and_developer_maps_to_system(tmp_path: Path) -> None:
    tool_example = {
        "messages": [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
    }
    path = write_jsonl(tmp_path / "d.jsonl", [tool_example] * 10)
    report = chat.validate_file(path)
    assert report.ok, report.summary()
    example = chat.read_examples(path)[0]
    assert example.messages[0]["role"] == "system"
    assert example.tools and example.tools[0]["function"]["name"] == "get_weather"
    assert example.messages[2]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_problems_are_counted_beyond_the_kept_ones(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(["{bad"] * 30) + "\n")
    report = chat.validate_file(path, max_problems=5)
    assert report.n_problems == 30 and len(report.problems) == 5
    assert "and 25 more problem(s)" in report.summary(limit=5)


def test_huge_line_is_rejected_without_reading_it_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chat, "MAX_LINE_BYTES", 1000)
    rows = valid_examples(12)
    path = tmp_path / "d.jsonl"
    with open(path, "w") as handle:
        for i, row in enumerate(rows):
            if i == 3:
                handle.write(json.dumps({"messages": [{"role": "user", "content": "x" * 5000}]}) + "\n")
            handle.write(json.dumps(row) + "\n")
    report = chat.validate_file(path)
    assert report.problems[0].line == 4
    assert report.problems[0].kind == "line_too_long"
    assert report.n_examples == 12
