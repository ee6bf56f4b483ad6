"""Reading tool calls back out of generated text, whole or while it streams.

The text format is `openft.datasets.toolcalls`'s (what the trainer writes): a JSON object alone on its
line(s), `{"name": …, "arguments": {…}}`, or a Hermes/Qwen `<tool_call>…</tool_call>` block. Where an
object ends is decided by the incremental JSON checker of constrained decoding (`json_prefix`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass

from openft.datasets.toolcalls import HERMES_CLOSE, HERMES_OPEN
from openft.inference.json_prefix import JsonObjectPrefix

_WHITESPACE = " \t\n\r"


@dataclass(frozen=True)
class TextToolCall:
    """One function call found in generated text."""

    name: str
    arguments: str
    """JSON text, as OpenAI sends it (`"{}"` when the model wrote no arguments)."""


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
    """The scan behind `ToolCallParser`, with memories that survive between scans of a growing text: every
    search resumes where the previous one stopped (see `ToolCallParser`)."""

    def __init__(self, names: Collection[str] | None):
        self._names = names
        self._forget()

    def _forget(self) -> None:
        """Start over, as a new scanner (the text is not a longer version of the one scanned)."""
        self._open = _Finder(HERMES_OPEN)
        self._close = _Finder(HERMES_CLOSE)
        self._blank_run = (-1, -1)  # (start, reached): text[start:reached] is spaces and tabs only
        self._object: _ObjectLine | None = None
        self._newline = (0, -1)  # (searched up to, the last newline before that, or -1)
        self._seen = 0  # the longest `end` scanned so far
        self.scanned = 0

    def scan(self, text: str, start: int, end: int, *, final: bool) -> tuple[list[str | TextToolCall], int]:
        """Text pieces and calls of `text[start:end]`, up to the first place a call may still be forming.

        Returns the pieces and the position they reach. With `final=False` (text still growing) the scan
        stops at an unclosed `<tool_call>`, at a trailing partial `<tool_call` tag, or at a line that is (or
        may become) an unfinished JSON object; everything before that position is settled: more text never
        changes it. That is what lets a stream send content early and still match `parse_tool_calls_from_text`
        on the whole text. `start` must be a position an earlier scan of a prefix of `text` returned.
        """
        if end < self._seen:  # not a longer version of the text: forget what was learnt
            self._forget()
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
