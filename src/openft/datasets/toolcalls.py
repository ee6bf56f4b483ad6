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
import re
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

    `settled_delta(text)` returns the content that became certain since the last call, whatever text
    comes next: it holds back anything that may still turn out to be a call, and surrounding whitespace
    (the final content is stripped). `finish(full_text)` returns the whole content, which extends every
    delta given, so a stream of the deltas concatenates to exactly the one-shot content.

    Each call costs time proportional to the text added since the previous one (plus, once, the size
    of a call when it completes), not to the length of the reply: a call still forming is not rescanned
    from its start on every token (that made a long reply quadratic: one request took CPU-minutes);
    what was learnt about it (the JSON checker's state, how far `</tool_call>` was searched for, a run
    of blanks) is kept. `scanned` counts the characters examined, so tests can check that.
    """

    def __init__(self, names: Collection[str] | None = None):
        self._scanner = _Scanner(names)
        self._settled_at = 0
        self._content = _StrippedContent()
        self._calls: list[TextToolCall] = []

    @property
    def scanned(self) -> int:
        """Characters examined so far over all calls (searches, blank runs, JSON checking, call bodies)."""
        return self._scanner.scanned

    def settled_delta(self, text: str, end: int | None = None) -> str:
        """Content settled in `text[:end]` (all of `text` by default) beyond what earlier calls gave.

        `text[:end]` must extend the text of the previous call; `end` spares the caller a copy of the prefix.
        """
        stop = len(text) if end is None else end
        return self._take(*self._scanner.scan(text, self._settled_at, stop, final=False))

    def finish(self, text: str) -> tuple[str, list[TextToolCall]]:
        """The content and the calls of the whole, final `text`."""
        self._take(*self._scanner.scan(text, self._settled_at, len(text), final=True))
        return self._content.text(), list(self._calls)

    def _take(self, pieces: list[str | TextToolCall], settled_at: int) -> str:
        added = []
        for piece in pieces:
            if isinstance(piece, str):
                added.append(self._content.add(piece))
            else:
                self._calls.append(piece)
        self._settled_at = settled_at
        return "".join(added)


class _StrippedContent:
    """Content pieces, joined and stripped of surrounding whitespace, handed out as soon as that is certain:
    leading whitespace is dropped, whitespace after the last visible character is held back until more
    content follows it (at the end it is dropped). Each character is handled a bounded number of times."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._held: list[str] = []
        self._started = False

    def add(self, piece: str) -> str:
        """Append a raw piece; returns what it adds to the stripped content."""
        visible_end = len(piece.rstrip(_WHITESPACE))
        if visible_end == 0:
            if self._started:
                self._held.append(piece)
            return ""
        head = piece[:visible_end]
        if self._started:
            added = "".join(self._held) + head
        else:
            added, self._started = head.lstrip(_WHITESPACE), True
        self._held = [piece[visible_end:]] if visible_end < len(piece) else []
        self._parts.append(added)
        return added

    def text(self) -> str:
        return "".join(self._parts)


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
    return _Scanner(names).scan(text, start, len(text), final=final)


_NON_BLANK = re.compile(r"[^ \t]")


class _Finder:
    """`text.find(pattern, position, end)` over a text that only grows, without searching a stretch twice.

    Remembers the last answer: asked again from the same place (or further, but not past the occurrence
    found), it answers at once, or searches only the characters added since."""

    def __init__(self, pattern: str):
        self._pattern = pattern
        self._origin = -1
        self._searched_to = 0
        self._found = -1

    def find(self, text: str, position: int, end: int) -> tuple[int, int]:
        """(index of the first occurrence at or after `position` within `text[:end]`, or -1; chars examined)."""
        begin = position
        if self._origin >= 0 and position >= self._origin:
            if self._found >= position:
                return self._found, 0
            if self._found < 0:
                begin = max(position, self._searched_to - len(self._pattern) + 1)
        found = text.find(self._pattern, begin, end)
        self._origin, self._searched_to, self._found = position, end, found
        return found, max(0, (found + len(self._pattern) if found >= 0 else end) - begin)


@dataclass
class _ObjectLine:
    """What is known about the JSON object at `brace` (a line's first non-blank character)."""

    brace: int
    checker: JsonObjectPrefix
    fed_to: int
    """Characters before this have been fed to `checker`."""
    closed_at: int | None = None
    """Where the object ended; None while it is still open."""
    rest_from: int = 0
    """After the object closed: the rest of its line before this is whitespace."""
    not_a_call: bool = False
    """Invalid JSON, or more text after it on its line: final, whatever follows."""


class _Scanner:
    """The scan behind `ToolCallParser` and `scan_tool_calls`, with memories that survive between scans of
    a growing text: every search resumes where the previous one stopped (see `ToolCallParser`)."""

    def __init__(self, names: Collection[str] | None):
        self._names = names
        self._open = _Finder(HERMES_OPEN)
        self._close = _Finder(HERMES_CLOSE)
        self._blank_run = (-1, -1)  # (start, reached): text[start:reached] is spaces and tabs only
        self._object: _ObjectLine | None = None
        self._newline = (0, -1)  # (searched up to, the last newline before that, or -1)
        self._seen = 0  # the longest `end` scanned so far
        self.scanned = 0

    def scan(self, text: str, start: int, end: int, *, final: bool) -> tuple[list[str | TextToolCall], int]:
        """`scan_tool_calls` of `text[:end]` from `start`."""
        if end < self._seen:  # not a longer version of the text: forget what was learnt
            self.__init__(self._names)  # type: ignore[misc]
        self._seen = end
        pieces: list[str | TextToolCall] = []
        piece_start = position = start
        while True:
            hermes = self._find(self._open, text, position, end)
            line = self._next_object_line(text, position, hermes if hermes >= 0 else end, end)
            if line is not None:  # an object line before any <tool_call>
                line_start, brace = line
                span = self._object_line_end(text, brace, end, final)
                if span is None:  # still forming
                    pieces.append(text[piece_start:line_start])
                    return _merged(pieces), line_start
                call = self._call(text[brace : span[0]]) if span[0] > brace else None
                if call is None:
                    position = brace + 1
                    continue
                pieces += [text[piece_start:line_start], call]
                piece_start = position = span[1]
                continue
            if hermes >= 0:
                close = self._find(self._close, text, hermes, end)
                if close < 0 and not final:
                    pieces.append(text[piece_start:hermes])
                    return _merged(pieces), hermes
                body_end = close if close >= 0 else end
                call = self._call(text[hermes + len(HERMES_OPEN) : body_end].strip(_WHITESPACE))
                if call is None:
                    position = hermes + 1
                    continue
                pieces += [text[piece_start:hermes], call]
                piece_start = position = body_end + len(HERMES_CLOSE) if close >= 0 else end
                continue
            if not final:
                forming = self._forming_at_end(text, max(position, piece_start), end)
                if forming is not None:
                    pieces.append(text[piece_start:forming])
                    return _merged(pieces), forming
            pieces.append(text[piece_start:end])
            return _merged(pieces), end

    def _find(self, finder: _Finder, text: str, position: int, end: int) -> int:
        found, examined = finder.find(text, position, end)
        self.scanned += examined
        return found

    def _call(self, body: str) -> TextToolCall | None:
        self.scanned += len(body)
        return _as_call(body, self._names)

    def _skip_blanks(self, text: str, start: int, end: int) -> int:
        """The first index at or after `start` in `text[:end]` that is not a space or tab (`end` if none)."""
        run_start, reached = self._blank_run
        begin = reached if run_start >= 0 and run_start <= start <= reached else start
        match = _NON_BLANK.search(text, begin, end)
        first = match.start() if match else end
        self.scanned += first - begin + (match is not None)
        self._blank_run = (run_start if begin != start else start, first)
        return first

    def _next_object_line(self, text: str, position: int, limit: int, end: int) -> tuple[int, int] | None:
        """(line start, index of its `{`) of the first line starting in [`position`, `limit`) whose first
        non-blank is `{`. Lines from `limit` on are not looked at: a `<tool_call>` there comes first."""
        start = position
        if position > 0 and text[position - 1] != "\n":
            newline = self._find_newline(text, position, limit)
            if newline < 0:
                return None
            start = newline + 1
        while start < limit:
            first = self._skip_blanks(text, start, end)
            if first < end and text[first] == "{":
                return start, first
            newline = self._find_newline(text, first, limit)
            if newline < 0:
                return None
            start = newline + 1
        return None

    def _find_newline(self, text: str, position: int, limit: int) -> int:
        newline = text.find("\n", position, limit)
        self.scanned += (newline + 1 if newline >= 0 else limit) - position
        return newline

    def _object_line_end(self, text: str, brace: int, end: int, final: bool) -> tuple[int, int] | None:
        """Where the JSON object at `brace` ends, and where its line ends (after the newline).

        None while it is still forming (only when not `final`). An invalid object, or one followed by more
        text on its line, gives an empty object span (end == brace): not a call.
        """
        state = self._object
        if state is None or state.brace != brace:
            state = self._object = _ObjectLine(brace, JsonObjectPrefix(), brace)
        if not state.not_a_call and state.closed_at is None:
            ok, length = state.checker.feed(text[state.fed_to : end])
            self.scanned += (length if length is not None else end - state.fed_to) if ok else 1
            if not ok:
                state.not_a_call = True  # the checker's state is undefined now: never fed again
            elif length is not None:
                state.closed_at = state.rest_from = state.fed_to + length
            else:
                state.fed_to = end
        if state.not_a_call:
            return brace, brace
        if state.closed_at is None:  # valid so far, incomplete
            return (brace, brace) if final else None
        newline = self._find_newline(text, state.rest_from, end)
        rest_end = newline if newline >= 0 else end
        if text[state.rest_from : rest_end].strip(_WHITESPACE):
            state.not_a_call = True
            return brace, brace
        state.rest_from = rest_end
        if newline < 0:
            return (state.closed_at, end) if final else None
        return state.closed_at, newline + 1

    def _forming_at_end(self, text: str, position: int, end: int) -> int | None:
        """Start of a tail of `text[:end]` that may still become a call: a partial `<tool_call` tag, or a
        last line that is blank so far (its `{` may come next)."""
        for size in range(min(len(HERMES_OPEN) - 1, end - position), 0, -1):
            if HERMES_OPEN.startswith(text[end - size : end]):
                self.scanned += size
                return end - size
        searched_to, last_newline = self._newline
        newline = text.rfind("\n", searched_to, end)
        self.scanned += end - searched_to
        last_newline = newline if newline >= 0 else last_newline
        self._newline = (end, last_newline)
        last_line = last_newline + 1
        if last_line >= position and self._skip_blanks(text, last_line, end) == end:
            return last_line
        return None


def _merged(pieces: list[str | TextToolCall]) -> list[str | TextToolCall]:
    return [p for p in pieces if p != ""]


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
