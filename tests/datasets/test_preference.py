"""DPO (preference) data: what validation accepts, what it rejects (code, line, words), what reading returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openft.datasets import preference
from openft.datasets.chat import DataFormatError
from openft.datasets.formats import detect_method, validate_for_method
from tests.support.data import jsonl_bytes, valid_examples, write_jsonl

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
OUTPUTS = ("preferred_output", "non_preferred_output")


def pair(i: int, *, old_names: bool = False) -> dict[str, Any]:
    chosen, rejected = ("preferred_completion", "non_preferred_completion") if old_names else OUTPUTS
    return {
        "input": {
            "messages": [
                {"role": "system", "content": "You answer questions about the Zorblax kettle."},
                {"role": "user", "content": f"Question {i}: how fast does the kettle boil?"},
            ]
        },
        chosen: [{"role": "assistant", "content": f"Answer {i}: in 90 seconds."}],
        rejected: [{"role": "assistant", "content": f"Answer {i}: I don't know."}],
    }


def pairs(n: int = 12) -> list[dict[str, Any]]:
    return [pair(i) for i in range(n)]


def with_line(line: int, row: Any) -> bytes:
    rows: list[Any] = pairs()
    rows[line - 1] = row
    return jsonl_bytes(rows)


def _with(i: int, **changes: Any) -> dict[str, Any]:
    row = pair(i)
    row.update(changes)
    return row


def _malformed() -> dict[str, tuple[bytes, str, int | None]]:
    """name → (file bytes, expected job error code, expected 1-based line of the first problem)."""
    lines = jsonl_bytes(pairs()).split(b"\n")
    input_ending_with_assistant = pair(0)
    input_ending_with_assistant["input"]["messages"].append({"role": "assistant", "content": "Hm."})
    bad_input_message = pair(0)
    bad_input_message["input"]["messages"][1] = {"role": "robot", "content": "x"}
    assistant = {"role": "assistant", "content": "y"}
    return {
        "not_json": (b"\n".join([*lines[:4], b"{not json", *lines[4:]]), "invalid_file_format", 5),
        "not_utf8": (b"\n".join([*lines[:6], b'{"input": "\xff\xfe"}', *lines[6:]]), "invalid_encoding", 7),
        "not_an_object": (with_line(3, [1, 2]), "invalid_file_format", 3),
        "missing_input": (with_line(2, {"preferred_output": [assistant]}), "invalid_file_format", 2),
        "empty_input_messages": (with_line(2, _with(1, input={"messages": []})), "invalid_file_format", 2),
        "missing_preferred_output": (
            with_line(4, {"input": pair(3)["input"], "non_preferred_output": [assistant]}),
            "invalid_file_format",
            4,
        ),
        "missing_non_preferred_output": (
            with_line(5, {"input": pair(4)["input"], "preferred_output": [assistant]}),
            "invalid_file_format",
            5,
        ),
        "two_messages_in_output": (
            with_line(6, _with(5, preferred_output=[assistant, assistant])),
            "invalid_file_format",
            6,
        ),
        "empty_output": (with_line(6, _with(5, non_preferred_output=[])), "invalid_file_format", 6),
        "output_not_a_list": (with_line(6, _with(5, preferred_output=assistant)), "invalid_file_format", 6),
        "user_role_in_output": (
            with_line(7, _with(6, non_preferred_output=[{"role": "user", "content": "y"}])),
            "invalid_file_format",
            7,
        ),
        "weight_in_output": (
            with_line(8, _with(7, preferred_output=[{**assistant, "weight": 1}])),
            "invalid_file_format",
            8,
        ),
        "output_without_content": (
            with_line(8, _with(7, preferred_output=[{"role": "assistant", "content": None}])),
            "invalid_file_format",
            8,
        ),
        "both_names_for_one_output": (
            with_line(9, _with(8, preferred_completion=[assistant])),
            "invalid_file_format",
            9,
        ),
        "input_ending_with_assistant": (with_line(10, input_ending_with_assistant), "invalid_file_format", 10),
        "bad_input_message": (with_line(11, bad_input_message), "invalid_file_format", 11),
        "bad_input_tools": (
            with_line(12, _with(11, input={**pair(11)["input"], "tools": [{"type": "function"}]})),
            "invalid_file_format",
            12,
        ),
        "chat_data_in_dpo_file": (with_line(3, valid_examples(1)[0]), "invalid_file_format", 3),
        "too_few_examples": (jsonl_bytes(pairs(9)), "invalid_n_examples", None),
        "empty_file": (b"", "invalid_n_examples", None),
    }


CASES = _malformed()


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_malformed_file_is_reported_with_code_and_line(tmp_path: Path, name: str) -> None:
    content, code, line = CASES[name]
    path = tmp_path / "dpo.jsonl"
    path.write_bytes(content)
    report = preference.validate_preference_file(path)
    assert not report.ok
    assert report.code == code
    assert report.problems[0].line == line
    if line is None:
        assert len(preference.read_preference_examples(path)) < 10  # counting is the validator's job
    else:
        assert report.summary().startswith(f"line {line}:")
        with pytest.raises(DataFormatError) as raised:
            preference.read_preference_examples(path)
        assert raised.value.problem.line == line


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("chat_data_in_dpo_file", "this is supervised chat data; a dpo job needs input/preferred_output"),
        ("two_messages_in_output", "preferred_output must be a list of exactly one assistant message, got 2"),
        ("user_role_in_output", "non_preferred_output message 1 has role 'user'"),
        ("weight_in_output", "preferred_output message 1 has a weight"),
        ("input_ending_with_assistant", "input message 3 (assistant) is the last one"),
        ("bad_input_message", "input message 2 has an unrecognized role 'robot'"),
        ("missing_preferred_output", 'missing "preferred_output" (or the older "preferred_completion")'),
    ],
)
def test_messages_say_what_is_wrong(tmp_path: Path, name: str, words: str) -> None:
    path = tmp_path / "dpo.jsonl"
    path.write_bytes(CASES[name][0])
    assert words in preference.validate_preference_file(path).summary()


def test_valid_file_with_both_naming_styles_bom_and_blank_line(tmp_path: Path) -> None:
    rows = [pair(i, old_names=i % 2 == 1) for i in range(10)]
    path = write_jsonl(tmp_path / "dpo.jsonl", rows)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\n\n", 1))
    report = preference.validate_preference_file(path)
    assert report.ok, report.summary()
    assert report.n_examples == 10
    examples = preference.read_preference_examples(path)
    assert [e.line for e in examples[:3]] == [1, 3, 4]  # the blank line still counts
    old = examples[1]
    assert old.chosen == {"role": "assistant", "content": "Answer 1: in 90 seconds."}
    assert old.rejected == {"role": "assistant", "content": "Answer 1: I don't know."}
    assert old.prompt_messages[1] == {"role": "user", "content": "Question 1: how fast does the kettle boil?"}
    assert old.tools is None


def test_tools_tool_calls_and_normalization(tmp_path: Path) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    row = {
        "input": {
            "messages": [
                {"role": "developer", "content": "Use tools."},
                {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "now?"}]},
                {"role": "assistant", "tool_calls": [call], "weight": 0},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
            "tools": [WEATHER_TOOL],
            "parallel_tool_calls": False,
        },
        "preferred_output": [{"role": "assistant", "content": "It is sunny in Paris."}],
        "non_preferred_output": [{"role": "assistant", "content": None, "tool_calls": [call]}],
    }
    path = write_jsonl(tmp_path / "dpo.jsonl", [row] * 10)
    assert preference.validate_preference_file(path).ok
    example = preference.read_preference_examples(path)[0]
    assert example.tools == [WEATHER_TOOL]
    assert [m["role"] for m in example.prompt_messages] == ["system", "user", "assistant", "tool"]
    assert example.prompt_messages[1]["content"] == "Weather now?"
    assert all("weight" not in m for m in [*example.prompt_messages, example.chosen, example.rejected])
    assert example.rejected["tool_calls"] == [call]


def test_problems_are_capped_but_all_counted(tmp_path: Path) -> None:
    path = tmp_path / "dpo.jsonl"
    path.write_bytes(b"nope\n" * 30)
    report = preference.validate_preference_file(path, max_problems=5)
    assert report.n_problems == 30 and len(report.problems) == 5
    assert "and 25 more problem(s)" in report.summary(limit=5)


def test_validate_for_method_picks_the_format(tmp_path: Path) -> None:
    dpo = write_jsonl(tmp_path / "dpo.jsonl", pairs(3))
    sft = write_jsonl(tmp_path / "sft.jsonl", valid_examples(3))
    assert validate_for_method(dpo, "dpo", min_examples=1).ok
    assert validate_for_method(sft, "supervised", min_examples=1).ok
    assert "supervised chat data" in validate_for_method(sft, "dpo", min_examples=1).summary()
    assert "preference (DPO) data" in validate_for_method(dpo, "supervised", min_examples=1).summary()
    assert validate_for_method(dpo, "dpo", min_examples=10).code == "invalid_n_examples"
    with pytest.raises(ValueError, match="method"):
        validate_for_method(dpo, "rft", min_examples=1)  # type: ignore[arg-type]


def test_detect_method_reads_the_first_object_line(tmp_path: Path) -> None:
    assert detect_method(write_jsonl(tmp_path / "dpo.jsonl", pairs(2))) == "dpo"
    assert detect_method(write_jsonl(tmp_path / "sft.jsonl", valid_examples(2))) == "supervised"
    broken_first = tmp_path / "broken.jsonl"
    broken_first.write_bytes(b"not json\n[1]\n" + jsonl_bytes(pairs(1)))
    assert detect_method(broken_first) == "dpo"
