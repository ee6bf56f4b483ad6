"""The JSON grammar of constrained decoding: is a growing text the beginning of one JSON object?

`response_format: {"type": "json_object"}` lets the decoder pick only tokens that keep the reply a valid
prefix of a JSON object (`openft.inference.decoding`), and the tool-call parser uses the same checker to
find where a call's object ends in generated text (`openft.inference.toolcall_parser`).
"""

from __future__ import annotations

_WHITESPACE = " \t\n\r"

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
