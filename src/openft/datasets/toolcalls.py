"""Tool calls as plain text: how the trainer writes them and how inference reads them back.

Many chat templates (SmolLM2's among them) print only a message's `content`, never its `tool_calls`.
For those the trainer appends each call to the assistant content as one JSON line
`{"name": …, "arguments": {…}}`, so the model learns to answer with such lines; inference must parse
exactly that text back. Both sides use this module so the two formats cannot drift apart. Inference
also reads the Hermes/Qwen format, `<tool_call>{"name": …, "arguments": {…}}</tool_call>`, which
templates that know about tools teach their models.

Pure Python (no torch), like the rest of `openft.datasets`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"

_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class TextToolCall:
    """One function call found in generated text."""

    name: str
    arguments: str
    """JSON text, as OpenAI sends it (`"{}"` when the model wrote no arguments)."""


# Rendering (training side) ----------------------------------------------------------------------


def template_renders_tool_calls(tokenizer: Any) -> bool:
    """Does the chat template print `tool_calls` itself? (SmolLM2's, like many, only prints `content`.)"""
    return "tool_calls" in str(getattr(tokenizer, "chat_template", None) or "")


def arguments_for_template(raw: Any) -> Any:
    """OpenAI sends arguments as a JSON string; templates (and the text format) want the object."""
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return raw
        return parsed if isinstance(parsed, dict) else raw
    return raw


def template_functions(tool_calls: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`{"name", "arguments"}` of each OpenAI tool call, arguments as an object where they parse as one."""
    return [
        {"name": call["function"]["name"], "arguments": arguments_for_template(call["function"].get("arguments", ""))}
        for call in tool_calls
    ]


def render_tool_calls_as_text(content: str, tool_calls: Iterable[Mapping[str, Any]]) -> str:
    """The content followed by one JSON line per call: what the model sees and learns to write."""
    text = "\n".join(json.dumps(f, ensure_ascii=False) for f in template_functions(tool_calls))
    return f"{content}\n{text}" if content else text


def with_tool_calls_for_template(message: dict[str, Any], *, native_tool_calls: bool) -> dict[str, Any]:
    """`message` as chat templates take it: calls as objects for templates that print them, else as text.

    Used for the prompt at inference and for every message in training, so a conversation history
    with tool calls renders the same in both.
    """
    calls = message.get("tool_calls")
    if "tool_calls" not in message:
        return message
    out = {k: v for k, v in message.items() if k != "tool_calls"}  # an empty list is no calls at all
    if not calls:
        return out
    if native_tool_calls:
        functions = template_functions(calls)
        out["tool_calls"] = [{**c, "type": "function", "function": f} for c, f in zip(calls, functions, strict=True)]
    else:
        out["content"] = render_tool_calls_as_text(message.get("content") or "", calls)
    return out


# Parsing (inference side) -----------------------------------------------------------------------


def parse_tool_calls_from_text(text: str, names: Collection[str] | None = None) -> tuple[str, list[TextToolCall]]:
    """Split generated text into its content and its tool calls (both formats, in order of appearance).

    A call is a `<tool_call>…</tool_call>` block (the closing tag may be missing at the very end), or a
    JSON object that starts a line and is the only thing on its line(s), with a string `name` and an
    `arguments` (or `parameters`) object or string. With `names`, calls to other functions stay text.
    The content is what remains, stripped of surrounding whitespace.
    """
    return ToolCallParser(names).finish(text)


class ToolCallParser:
    """`parse_tool_calls_from_text` over a text that grows, for streaming.

    `settled_content(text)` returns the content that is certain whatever text comes next: it holds back
    anything that may still turn out to be a call, and surrounding whitespace (the final content is
    stripped). Each result extends the previous one, and `finish(full_text)` returns a content that
    extends them all, so a stream of the differences concatenates to exactly the one-shot content.
    """

    def __init__(self, names: Collection[str] | None = None):
        self._names = names
        self._settled_at = 0
        self._text = ""  # content pieces before `_settled_at`, unstripped
        self._calls: list[TextToolCall] = []

    def settled_content(self, text: str) -> str:
        """Content settled in `text`, a longer version of the text given last time."""
        self._take(*scan_tool_calls(text, self._settled_at, final=False, names=self._names))
        return self._text.strip(_WHITESPACE)

    def finish(self, text: str) -> tuple[str, list[TextToolCall]]:
        """The content and the calls of the whole, final `text`."""
        self._take(*scan_tool_calls(text, self._settled_at, final=True, names=self._names))
        return self._text.strip(_WHITESPACE), list(self._calls)

    def _take(self, pieces: list[str | TextToolCall], settled_at: int) -> None:
        for piece in pieces:
            if isinstance(piece, str):
                self._text += piece
            else:
                self._calls.append(piece)
        self._settled_at = settled_at


def scan_tool_calls(
    text: str, start: int = 0, *, final: bool, names: Collection[str] | None = None
) -> tuple[list[str | TextToolCall], int]:
    """Text pieces and calls of `text[start:]`, up to the first place a call may still be forming.

    Returns the pieces and the position they reach. With `final=False` (text still growing) the scan
    stops at an unclosed `<tool_call>`, at a trailing partial `<tool_call` tag, or at a line that is (or
    may become) an unfinished JSON object; everything before that position is settled: more text never
    changes it. That is what lets a stream send content early and still match `parse_tool_calls_from_text`
    on the whole text. `start` must be a position an earlier scan of a prefix of `text` returned.
    """
    pieces: list[str | TextToolCall] = []
    piece_start = position = start
    while True:
        hermes = text.find(HERMES_OPEN, position)
        line = _next_object_line(text, position)
        if line is not None and (hermes < 0 or line[1] < hermes):
            line_start, brace = line
            end = _object_line_end(text, brace, final)
            if end is None:  # still forming
                pieces.append(text[piece_start:line_start])
                return _merged(pieces), line_start
            call = _as_call(text[brace : end[0]], names) if end[0] > brace else None
            if call is None:
                position = brace + 1
                continue
            pieces += [text[piece_start:line_start], call]
            piece_start = position = end[1]
            continue
        if hermes >= 0:
            close = text.find(HERMES_CLOSE, hermes)
            if close < 0 and not final:
                pieces.append(text[piece_start:hermes])
                return _merged(pieces), hermes
            body_end = close if close >= 0 else len(text)
            call = _as_call(text[hermes + len(HERMES_OPEN) : body_end].strip(_WHITESPACE), names)
            if call is None:
                position = hermes + 1
                continue
            pieces += [text[piece_start:hermes], call]
            piece_start = position = body_end + len(HERMES_CLOSE) if close >= 0 else len(text)
            continue
        if not final:
            forming = _forming_at_end(text, max(position, piece_start))
            if forming is not None:
                pieces.append(text[piece_start:forming])
                return _merged(pieces), forming
        pieces.append(text[piece_start:])
        return _merged(pieces), len(text)


def _merged(pieces: list[str | TextToolCall]) -> list[str | TextToolCall]:
    return [p for p in pieces if p != ""]


def _line_starts(text: str, position: int) -> Iterable[int]:
    """Starts of the lines that begin at or after `position`."""
    if position == 0 or text[position - 1] == "\n":
        yield position
    while (newline := text.find("\n", position)) >= 0:
        position = newline + 1
        yield position


def _next_object_line(text: str, position: int) -> tuple[int, int] | None:
    """(line start, index of its `{`) of the next line at or after `position` whose first non-blank is `{`."""
    for start in _line_starts(text, position):
        first = start
        while first < len(text) and text[first] in " \t":
            first += 1
        if first < len(text) and text[first] == "{":
            return start, first
    return None


def _object_line_end(text: str, brace: int, final: bool) -> tuple[int, int] | None:
    """Where the JSON object at `brace` ends, and where its line ends (after the newline).

    None while it is still forming (only when not `final`). An invalid object, or one followed by more
    text on its line, gives an empty object span (end == brace): not a call.
    """
    checker = JsonObjectPrefix()
    ok, length = checker.feed(text[brace:])
    if not ok:
        return brace, brace
    if length is None:  # valid so far, incomplete
        return (brace, brace) if final else None
    end = brace + length
    newline = text.find("\n", end)
    rest = text[end : newline if newline >= 0 else len(text)]
    if rest.strip(_WHITESPACE):
        return brace, brace
    if newline < 0:
        return (end, len(text)) if final else None
    return end, newline + 1


def _forming_at_end(text: str, position: int) -> int | None:
    """Start of a tail of `text` that may still become a call: a partial `<tool_call` tag, or a last
    line that is blank so far (its `{` may come next)."""
    for size in range(min(len(HERMES_OPEN) - 1, len(text) - position), 0, -1):
        if HERMES_OPEN.startswith(text[-size:]):
            return len(text) - size
    last_line = text.rfind("\n") + 1
    if last_line >= position and not text[last_line:].strip(" \t"):
        return last_line
    return None


def _as_call(body: str, names: Collection[str] | None) -> TextToolCall | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):
        return TextToolCall(obj["name"], arguments)
    if not isinstance(arguments, dict):
        return None
    return TextToolCall(obj["name"], json.dumps(arguments, ensure_ascii=False))


# An incremental JSON-object checker ---------------------------------------------------------------

_START, _VALUE, _OBJ_FIRST, _OBJ_KEY, _COLON, _AFTER, _ARR_FIRST = range(7)
_STRING, _ESCAPE, _UNICODE, _NUMBER, _LITERAL, _DONE = range(7, 13)
_NUMBER_END = {"zero", "int", "frac", "expdigits"}
_HEX = set("0123456789abcdefABCDEF")


class JsonObjectPrefix:
    """Is the text fed so far the beginning of one JSON object (RFC 8259), and where does it end?

    Character by character, with a stack of open containers, so a growing text is checked in time
    proportional to the new characters. `copy()` is cheap, which lets a decoder try candidate tokens.
    `max_whitespace` caps runs of whitespace between tokens (a constrained model can otherwise emit
    blank lines forever); None allows any.
    """

    __slots__ = ("_after_string", "_literal", "_max_whitespace", "_mode", "_number", "_stack", "_unicode", "_ws")

    def __init__(self, max_whitespace: int | None = None):
        self._stack: list[str] = []
        self._mode = _START
        self._after_string = _AFTER
        self._number = ""
        self._literal = ""
        self._unicode = 0
        self._ws = 0
        self._max_whitespace = max_whitespace

    def copy(self) -> JsonObjectPrefix:
        other = JsonObjectPrefix.__new__(JsonObjectPrefix)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other._stack = list(self._stack)
        return other

    @property
    def in_string(self) -> bool:
        return self._mode in (_STRING, _ESCAPE, _UNICODE)

    @property
    def done(self) -> bool:
        return self._mode == _DONE

    def feed(self, text: str) -> tuple[bool, int | None]:
        """Advance over `text`. Returns (still valid, chars consumed when the object closed, else None).

        Characters after the closing brace are not consumed. After an invalid character the state is
        undefined: check on a `copy()` first.
        """
        for index, char in enumerate(text):
            if not self._step(char):
                return False, None
            if self._mode == _DONE:
                return True, index + 1
        return True, None

    def _step(self, c: str) -> bool:
        mode = self._mode
        if mode == _STRING:
            if c == '"':
                self._mode = self._after_string
            elif c == "\\":
                self._mode = _ESCAPE
            elif c < " ":
                return False
            return True
        if mode == _ESCAPE:
            if c == "u":
                self._mode, self._unicode = _UNICODE, 4
                return True
            self._mode = _STRING
            return c in '"\\/bfnrt'
        if mode == _UNICODE:
            self._unicode -= 1
            if self._unicode == 0:
                self._mode = _STRING
            return c in _HEX
        if mode == _LITERAL:
            if c != self._literal[0]:
                return False
            self._literal = self._literal[1:]
            if not self._literal:
                self._mode = _AFTER
            return True
        if mode == _NUMBER:
            if self._number_step(c):
                return True
            if self._number not in _NUMBER_END:
                return False
            self._mode = mode = _AFTER  # the number ended; `c` follows it
        if c in _WHITESPACE:
            if mode in (_START, _DONE):
                return False
            self._ws += 1
            return self._max_whitespace is None or self._ws <= self._max_whitespace
        self._ws = 0
        if mode == _START:
            return self._open(c, "{")
        if mode in (_VALUE, _ARR_FIRST):
            if mode == _ARR_FIRST and c == "]":
                return self._close(c)
            return self._value(c)
        if mode in (_OBJ_FIRST, _OBJ_KEY):
            if mode == _OBJ_FIRST and c == "}":
                return self._close(c)
            if c != '"':
                return False
            self._mode, self._after_string = _STRING, _COLON
            return True
        if mode == _COLON:
            self._mode = _VALUE
            return c == ":"
        if mode == _AFTER:
            if c == ",":
                self._mode = _OBJ_KEY if self._stack[-1] == "{" else _VALUE
                return True
            return self._close(c)
        return False

    def _open(self, c: str, allowed: str) -> bool:
        if c not in allowed:
            return False
        self._stack.append(c)
        self._mode = _OBJ_FIRST if c == "{" else _ARR_FIRST
        return True

    def _close(self, c: str) -> bool:
        if not self._stack or {"{": "}", "[": "]"}[self._stack[-1]] != c:
            return False
        self._stack.pop()
        self._mode = _AFTER if self._stack else _DONE
        return True

    def _value(self, c: str) -> bool:
        if c in "{[":
            return self._open(c, "{[")
        if c == '"':
            self._mode, self._after_string = _STRING, _AFTER
        elif c == "-" or (c.isascii() and c.isdigit()):
            self._mode, self._number = _NUMBER, {"-": "minus", "0": "zero"}.get(c, "int")
        elif c in "tfn":
            self._mode, self._literal = _LITERAL, {"t": "rue", "f": "alse", "n": "ull"}[c]
        else:
            return False
        return True

    def _number_step(self, c: str) -> bool:
        """Advance the number's sub-state on `c`; False when `c` is not part of the number."""
        state, digit = self._number, c.isascii() and c.isdigit()
        if digit:
            following = {"minus": "int" if c != "0" else "zero", "int": "int", "dot": "frac", "frac": "frac"}
            following |= {"exp": "expdigits", "expsign": "expdigits", "expdigits": "expdigits"}
            if state not in following:
                return False
            self._number = following[state]
            return True
        if c == "." and state in ("zero", "int"):
            self._number = "dot"
        elif c in "eE" and state in ("zero", "int", "frac"):
            self._number = "exp"
        elif c in "+-" and state == "exp":
            self._number = "expsign"
        else:
            return False
        return True
