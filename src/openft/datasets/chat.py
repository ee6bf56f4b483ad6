"""Chat fine-tuning data (JSONL, one example per line) as OpenAI and Azure define it (docs/api-compatibility.md §5).

`validate_file` finds every problem with its 1-based line number without loading the file into
memory; `read_examples` returns the normalized examples the trainer tokenizes. Both share one parser,
so what validation accepts is exactly what training reads.

The line reader, the message and tool checks and the report builder are public so that other formats
(`preference.py`) apply exactly the same rules and report problems the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

MIN_EXAMPLES = 10
MAX_LINE_BYTES = 32 * 1024 * 1024
"""A single example larger than this is rejected (it could not fit any model's context anyway)."""

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal"}
_BOM = b"\xef\xbb\xbf"
T = TypeVar("T")

# Job-level error codes (docs/api-compatibility.md §5): stable, snake_case, `invalid_` prefix.
CODE_ENCODING = "invalid_encoding"
CODE_FORMAT = "invalid_file_format"
CODE_N_EXAMPLES = "invalid_n_examples"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file. `kind` follows the OpenAI cookbook's check names."""

    line: int | None
    kind: str
    message: str

    @property
    def code(self) -> str:
        if self.kind == "encoding":
            return CODE_ENCODING
        if self.kind == "n_examples":
            return CODE_N_EXAMPLES
        return CODE_FORMAT

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass
class ChatExample:
    """A normalized example: text content, roles the templates know, explicit weights."""

    line: int
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None


@dataclass
class ValidationReport:
    n_examples: int = 0
    n_lines: int = 0
    problems: list[Problem] = field(default_factory=list)
    n_problems: int = 0
    """All problems found; `problems` keeps only the first `max_problems` of them."""

    @property
    def ok(self) -> bool:
        return self.n_problems == 0

    @property
    def code(self) -> str | None:
        return self.problems[0].code if self.problems else None

    def summary(self, limit: int = 5) -> str:
        """One message naming the first problems, for the job's `error.message`."""
        shown = "; ".join(str(p) for p in self.problems[:limit])
        more = self.n_problems - min(limit, len(self.problems))
        return shown + (f"; and {more} more problem(s)" if more > 0 else "")


class DataFormatError(ValueError):
    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


# Reading lines --------------------------------------------------------------------------------


def iter_lines(
    path: Path, *, stop: Callable[[int], bool] | None = None
) -> Iterator[tuple[int, str | None, Problem | None]]:
    """Yield (line number, decoded text or None, problem or None) for every non-blank line.

    Reads bounded chunks so a single huge line cannot exhaust memory; a UTF-8 BOM on the first
    line is accepted (Azure's documentation asks for one). `stop`, given the bytes read so far before
    each line, ends the reading early when it returns True (the data check's budget).
    """
    with open(path, "rb") as handle:
        line_no = 0
        while True:
            if stop is not None and stop(handle.tell()):
                return
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            line_no += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while True:  # skip the rest of the over-long line
                    rest = handle.readline(1024 * 1024)
                    if not rest or rest.endswith(b"\n"):
                        break
                yield (
                    line_no,
                    None,
                    Problem(line_no, "line_too_long", f"the line is longer than {MAX_LINE_BYTES} bytes"),
                )
                continue
            if line_no == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM) :]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line_no, None, Problem(line_no, "encoding", f"not valid UTF-8 (byte {exc.start + 1} of the line)")
                continue
            if text.strip():
                yield line_no, text, None


LONE_SURROGATE = "a string escapes a lone UTF-16 surrogate (\\ud800-\\udfff unpaired), which is not valid Unicode"


def _valid_unicode(obj: Any) -> bool:
    """False when a decoded line holds a lone surrogate: valid JSON, but no tokenizer or UTF-8 writer takes it."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Parsing one example --------------------------------------------------------------------------


def _text_content(content: Any, where: str, problems: list[str]) -> str | None:
    """Content as text: a string, or a list of `{"type": "text", "text": …}` parts joined."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict):
                problems.append(f"{where} content part {index + 1} is not an object")
                continue
            kind = part.get("type")
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("image_url", "input_audio", "file"):
                problems.append(f"{where} has a {kind} content part; only text is supported by these models")
            else:
                problems.append(f'{where} content part {index + 1} must be {{"type": "text", "text": string}}')
        return "".join(texts)
    problems.append(f"{where} content must be a string or a list of text parts")
    return None


def _check_tool_calls(calls: Any, where: str, problems: list[str]) -> None:
    if not isinstance(calls, list) or not calls:
        problems.append(f"{where} tool_calls must be a non-empty list")
        return
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments", ""), str)
        ):
            problems.append(
                f'{where} tool_calls[{index}] must be {{"type": "function", "function": '
                '{"name": string, "arguments": string}}'
            )


def _check_tools(tools: Any, problems: list[str]) -> list[dict[str, Any]] | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        problems.append("tools must be a list")
        return None
    for index, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("parameters", {}), dict)
        ):
            problems.append(f'tools[{index}] must be {{"type": "function", "function": {{"name": string, …}}}}')
    return tools


def parse_tool_fields(obj: dict[str, Any], problems: list[str]) -> list[dict[str, Any]] | None:
    """Check `tools`, the deprecated `functions` and `parallel_tool_calls` of an example (or of a DPO `input`);
    return the tools, with `functions` turned into tools."""
    tools = _check_tools(obj.get("tools"), problems)
    if obj.get("functions") is not None:
        functions = obj["functions"]
        if not isinstance(functions, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) for f in functions
        ):
            problems.append('functions must be a list of {"name": string, …}')
        else:
            tools = (tools or []) + [{"type": "function", "function": f} for f in functions]
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        problems.append("parallel_tool_calls must be true or false")
    return tools


def parse_message(index: int, message: Any, problems: list[str]) -> dict[str, Any] | None:
    """Check one message (appending to `problems`) and return it normalized: text content, developer → system,
    an explicit `weight` on assistant messages, `function_call` as `tool_calls`."""
    where = f"message {index + 1}"
    if not isinstance(message, dict):
        problems.append(f"{where} is not an object")
        return None
    role = message.get("role")
    if not isinstance(role, str):
        problems.append(f"{where} has no role")
        return None
    if role not in ROLES:
        problems.append(f"{where} has an unrecognized role {role!r} (allowed: {', '.join(sorted(ROLES))})")
        return None
    unknown = sorted(set(message) - MESSAGE_KEYS)
    if unknown:
        problems.append(f"{where} has unrecognized key(s) {', '.join(map(repr, unknown))}")
    where = f"message {index + 1} ({role})"
    has_calls = message.get("tool_calls") is not None or message.get("function_call") is not None
    if "content" not in message and not (role == "assistant" and has_calls):
        problems.append(f"{where} has no content")
    content = _text_content(message.get("content"), where, problems)
    if content is None and role != "assistant":
        if "content" in message:
            problems.append(f"{where} content must not be null")
    elif content is None and not has_calls and "content" in message:
        problems.append(f"{where} has null content and no tool_calls")
    normalized: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            problems.append(f"{where} has a weight; only assistant messages can have one")
        elif isinstance(weight, bool) or weight not in (0, 1):
            problems.append(f"{where} weight must be 0 or 1, got {weight!r}")
    if role == "assistant":
        normalized["weight"] = 0 if message.get("weight") == 0 else 1
    if message.get("tool_calls") is not None:
        if role != "assistant":
            problems.append(f"{where} has tool_calls; only assistant messages can have them")
        _check_tool_calls(message["tool_calls"], where, problems)
        normalized["tool_calls"] = message["tool_calls"]
    if message.get("function_call") is not None:
        call = message["function_call"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            problems.append(f'{where} function_call must be {{"name": string, "arguments": string}}')
        else:
            normalized["tool_calls"] = [{"type": "function", "function": call}]
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            if not isinstance(message[key], str):
                problems.append(f"{where} {key} must be a string")
            else:
                normalized[key] = message[key]
    return normalized


def parse_example(obj: Any, line: int) -> tuple[ChatExample | None, list[Problem]]:
    """Check one decoded JSON line; return the normalized example and the problems found."""
    if not isinstance(obj, dict):
        return None, [Problem(line, "data_type", f"each line must be a JSON object, got {type(obj).__name__}")]
    texts: list[str] = []
    if "messages" not in obj:
        if "preferred_output" in obj or "preferred_completion" in obj:
            texts.append('this is preference (DPO) data; a supervised job needs a "messages" list')
        elif "prompt" in obj and "completion" in obj:
            texts.append('the legacy prompt/completion format is not supported; use a "messages" list')
        else:
            texts.append('missing the "messages" list')
        return None, [Problem(line, "missing_messages_list", t) for t in texts]
    raw_messages = obj["messages"]
    if not isinstance(raw_messages, list) or not raw_messages:
        return None, [Problem(line, "missing_messages_list", '"messages" must be a non-empty list')]
    messages = [parse_message(i, m, texts) for i, m in enumerate(raw_messages)]
    tools = parse_tool_fields(obj, texts)
    valid = [m for m in messages if m is not None]
    if len(valid) == len(messages) and not any(m["role"] == "assistant" and m["weight"] == 1 for m in valid):
        texts.append("no assistant message to train on (an example needs one with weight 1)")
    if texts:
        return None, [Problem(line, "message_format", t) for t in texts]
    return ChatExample(line=line, messages=valid, tools=tools), []


def iter_parsed(
    path: Path,
    parse: Callable[[Any, int], tuple[T | None, list[Problem]]],
    *,
    stop: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, T | None, list[Problem]]]:
    """(line number, example or None, problems) for every non-blank line, decoded and parsed by `parse`."""
    for line_no, text, problem in iter_lines(path, stop=stop):
        if problem is not None:
            yield line_no, None, [problem]
            continue
        try:
            obj = json.loads(text or "")
        except json.JSONDecodeError as exc:
            yield line_no, None, [Problem(line_no, "invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})")]
            continue
        if "\\u" in (text or "") and not _valid_unicode(obj):
            yield line_no, None, [Problem(line_no, "encoding", LONE_SURROGATE)]
            continue
        example, problems = parse(obj, line_no)
        yield line_no, example, problems


def build_report(
    parsed: Iterable[tuple[int, object | None, list[Problem]]], *, min_examples: int, max_problems: int
) -> ValidationReport:
    """Count examples and problems of a parsed file; too few examples is a problem only of an otherwise valid file."""
    report = ValidationReport()
    for line_no, example, problems in parsed:
        report.n_lines = line_no
        if example is not None:
            report.n_examples += 1
        for problem in problems:
            report.n_problems += 1
            if len(report.problems) < max_problems:
                report.problems.append(problem)
    if report.n_problems == 0 and report.n_examples < min_examples:
        report.n_problems += 1
        report.problems.append(
            Problem(
                None, "n_examples", f"the file has {report.n_examples} example(s); at least {min_examples} are required"
            )
        )
    return report


def collect_examples(parsed: Iterable[tuple[int, T | None, list[Problem]]]) -> list[T]:
    """The examples of a parsed file; raises `DataFormatError` on the first problem."""
    examples = []
    for _line, example, problems in parsed:
        if problems:
            raise DataFormatError(problems[0])
        assert example is not None
        examples.append(example)
    return examples


# Public entry points --------------------------------------------------------------------------


def validate_file(path: Path, *, min_examples: int = MIN_EXAMPLES, max_problems: int = 20) -> ValidationReport:
    """Check a whole file; at most `max_problems` problems are kept (all are counted)."""
    return build_report(iter_parsed(Path(path), parse_example), min_examples=min_examples, max_problems=max_problems)


def read_examples(path: Path) -> list[ChatExample]:
    """All examples of a valid file; raises `DataFormatError` on the first problem."""
    return collect_examples(iter_parsed(Path(path), parse_example))
