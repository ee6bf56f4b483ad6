"""Structured outputs: is a growing text the beginning of one JSON object that a JSON Schema accepts?

`response_format: {"type": "json_schema", "json_schema": {"schema": …, "strict": true}}` constrains decoding
with this checker the way json_object does with `openft.inference.json_prefix.JsonObjectPrefix` (same
interface: `feed`, `copy`, `in_string`, `done`), so the decoder (`openft.inference.decoding`) and the vLLM
backend's own check use either.

`compile_schema` turns a schema into a small tree of nodes and refuses, naming its JSON pointer, every keyword
it would not enforce: a strict schema either holds for every reply or the request is a 400, never silently
half-enforced. The checker is a nondeterministic pushdown matcher: its state is a set of alternative stacks of
immutable frames (one alternative per `anyOf` branch or object key still possible), so `copy()` is a list
copy and `anyOf`, `enum` and recursive `$ref` need no backtracking.

Every state the checker accepts can still be completed: keys are limited to the properties not given yet,
a comma is refused once nothing more may follow, and `}` waits for the required properties. A reply can
still end unfinished when `max_tokens` runs out (finish_reason "length"), as with json_object.
"""

from __future__ import annotations

import json
from typing import Any

from openft.errors import InvalidRequest

SCHEMA_PARAM = "response_format.json_schema.schema"
MAX_SCHEMA_NODES = 2000
"""Most schema nodes compiled (a bound on the work one request's schema can cause)."""

_WHITESPACE = " \t\n\r"
_HEX = frozenset("0123456789abcdefABCDEF")
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$comment", "$schema", "$id"})
_KEYWORDS = {
    "object": frozenset({"type", "properties", "required", "additionalProperties"}),
    "array": frozenset({"type", "items", "minItems", "maxItems"}),
    "string": frozenset({"type"}),
    "number": frozenset({"type"}),
    "integer": frozenset({"type"}),
    "boolean": frozenset({"type"}),
    "null": frozenset({"type"}),
}
_NUMBER_END = frozenset({"zero", "int", "frac", "expdigits"})


class SchemaNode:
    """One compiled subschema. `kind` is a JSON type, "any", "literal" (enum/const: the values' JSON texts),
    "anyof" (`options`) or "ref" (`target`, filled in once its definition is compiled, so recursion works)."""

    __slots__ = ("items", "kind", "literals", "max_items", "min_items", "options", "properties", "required", "target")

    def __init__(self, kind: str):
        self.kind = kind
        self.properties: dict[str, SchemaNode] = {}
        self.required: frozenset[str] = frozenset()
        self.items: SchemaNode | None = None
        self.min_items = 0
        self.max_items: int | None = None
        self.literals: tuple[str, ...] = ()
        self.options: tuple[SchemaNode, ...] = ()
        self.target: SchemaNode | None = None

    def resolved(self) -> SchemaNode:
        node = self
        while node.kind == "ref":
            assert node.target is not None
            node = node.target
        return node


_ANY = SchemaNode("any")


def _error(pointer: str, message: str) -> InvalidRequest:
    """The JSON pointer is written after "schema" (`schema/properties/a/pattern`): error messages lose what
    looks like an absolute file path (`openft.redact`), and a bare pointer does."""
    return InvalidRequest(f"Invalid schema at 'schema{pointer}': {message}", param=SCHEMA_PARAM)


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


class _Compiler:
    def __init__(self, root: dict[str, Any]):
        self.root = root
        self.refs: dict[str, SchemaNode] = {}
        self.count = 0

    def compile(self, schema: Any, pointer: str) -> SchemaNode:
        self.count += 1
        if self.count > MAX_SCHEMA_NODES:
            raise _error(pointer, f"the schema has more than {MAX_SCHEMA_NODES} subschemas")
        if schema is True or schema == {}:
            return SchemaNode("any")
        if not isinstance(schema, dict):
            raise _error(pointer, "a schema must be an object")
        if "$ref" in schema:
            extra = set(schema) - {"$ref"} - _ANNOTATIONS
            if extra:
                raise _error(pointer, f"$ref with other keywords ({', '.join(sorted(extra))}) is not supported")
            return self._ref(schema["$ref"], pointer)
        for key in ("$defs", "definitions"):
            if key in schema and not isinstance(schema[key], dict):
                raise _error(f"{pointer}/{key}", "must be an object")
        if "anyOf" in schema:
            options = schema["anyOf"]
            if not isinstance(options, list) or not options:
                raise _error(f"{pointer}/anyOf", "must be a non-empty array")
            extra = set(schema) - {"anyOf", "$defs", "definitions"} - _ANNOTATIONS
            if extra:
                raise _error(pointer, f"anyOf with other keywords ({', '.join(sorted(extra))}) is not supported")
            node = SchemaNode("anyof")
            node.options = tuple(self.compile(option, f"{pointer}/anyOf/{i}") for i, option in enumerate(options))
            return node
        if "enum" in schema or "const" in schema:
            return self._literal(schema, pointer)
        types = schema.get("type")
        if types is None:
            extra = set(schema) - {"$defs", "definitions"} - _ANNOTATIONS
            if extra:
                raise _error(pointer, f"keywords without a type are not supported: {', '.join(sorted(extra))}")
            return SchemaNode("any")
        if isinstance(types, list):
            if not types or not all(t in _TYPES for t in types):
                raise _error(f"{pointer}/type", f"must be one of {', '.join(_TYPES)} or a list of them")
            if len(types) == 1:
                return self._typed(schema, types[0], pointer)
            node = SchemaNode("anyof")
            node.options = tuple(self._typed(schema, t, pointer) for t in dict.fromkeys(types))
            return node
        if types not in _TYPES:
            raise _error(f"{pointer}/type", f"must be one of {', '.join(_TYPES)} or a list of them")
        return self._typed(schema, types, pointer)

    def _typed(self, schema: dict[str, Any], kind: str, pointer: str) -> SchemaNode:
        allowed = _KEYWORDS[kind] | _ANNOTATIONS | {"$defs", "definitions"}
        if isinstance(schema.get("type"), list):  # keywords of the other listed types are fine too
            allowed = allowed.union(*(_KEYWORDS[t] for t in schema["type"] if t in _KEYWORDS))
        unsupported = sorted(set(schema) - allowed)
        if unsupported:
            first = unsupported[0]
            raise _error(
                f"{pointer}/{_escape(first)}",
                f"the keyword(s) {', '.join(unsupported)} are not supported in structured outputs",
            )
        node = SchemaNode(kind)
        if kind == "object":
            properties = schema.get("properties", {})
            if not isinstance(properties, dict):
                raise _error(f"{pointer}/properties", "must be an object")
            node.properties = {
                name: self.compile(sub, f"{pointer}/properties/{_escape(name)}") for name, sub in properties.items()
            }
            required = schema.get("required", [])
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                raise _error(f"{pointer}/required", "must be an array of strings")
            if schema.get("additionalProperties") is not False:  # as OpenAI's strict mode demands
                raise _error(f"{pointer}/additionalProperties", "must be given and be false in strict mode")
            missing = [name for name in required if name not in node.properties]
            if missing:
                raise _error(f"{pointer}/required", f"names properties that are not in properties: {missing}")
            node.required = frozenset(required)
        elif kind == "array":
            node.items = self.compile(schema.get("items", {}), f"{pointer}/items")
            for key in ("minItems", "maxItems"):
                value = schema.get(key)
                if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                    raise _error(f"{pointer}/{key}", "must be a non-negative integer")
            node.min_items = schema.get("minItems", 0)
            node.max_items = schema.get("maxItems")
            if node.max_items is not None and node.max_items < node.min_items:
                raise _error(f"{pointer}/maxItems", "is less than minItems")
        return node

    def _literal(self, schema: dict[str, Any], pointer: str) -> SchemaNode:
        extra = set(schema) - {"enum", "const", "type"} - _ANNOTATIONS
        if extra:
            raise _error(pointer, f"enum/const with other keywords ({', '.join(sorted(extra))}) is not supported")
        if "const" in schema:
            values = [schema["const"]]
        else:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise _error(f"{pointer}/enum", "must be a non-empty array")
        types = schema.get("type")
        if types is not None:  # a type next to an enum only narrows it
            wanted = set(types) if isinstance(types, list) else {types}
            values = [v for v in values if _type_of(v) in wanted or (_type_of(v) == "integer" and "number" in wanted)]
            if not values:
                raise _error(pointer, "no enum value has the given type")
        node = SchemaNode("literal")
        node.literals = tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values))
        return node

    def _ref(self, ref: Any, pointer: str) -> SchemaNode:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise _error(f"{pointer}/$ref", "only local references (#/$defs/…) are supported")
        if ref in self.refs:
            return self.refs[ref]
        node = SchemaNode("ref")
        self.refs[ref] = node
        target: Any = self.root
        for part in ref[1:].split("/")[1:] if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, dict) or part not in target:
                raise _error(f"{pointer}/$ref", f"{ref} does not exist")
            target = target[part]
        node.target = self.compile(target, ref[1:])
        return node


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def compile_schema(schema: Any) -> SchemaNode:
    """Compile a strict structured-outputs schema; InvalidRequest (param `response_format.json_schema.schema`,
    the JSON pointer in the message) for what it cannot enforce. The root must be an object (as OpenAI requires)."""
    if not isinstance(schema, dict):
        raise _error("", "the schema must be a JSON object")
    compiler = _Compiler(schema)
    root = compiler.compile(schema, "")
    if root.resolved().kind != "object":
        raise _error("", "the root of the schema must be an object (type: object)")
    for ref, node in compiler.refs.items():  # {"$ref": "#/$defs/a"} with a: {"$ref": "#/$defs/a"} never ends
        seen = set()
        while node.kind == "ref":
            if id(node) in seen:
                raise _error(ref[1:], "a $ref that refers only to itself")
            seen.add(id(node))
            assert node.target is not None
            node = node.target
    return root


# The matcher ------------------------------------------------------------------------------------------------
# A frame is a tuple; a stack is a tuple of frames (top last); an alternative is (stack, whitespace run).
#   ("V", node)                      a value of `node` comes next (whitespace allowed before it)
#   ("S", escape)                    inside a string: 0 plain, -1 after a backslash, k>0 hex digits left
#   ("L", text, pos)                 the rest of a literal (true, an enum value, a known key and its quote)
#   ("N", state, integer)            inside a number
#   ("O", node, seen, phase, value)  an object: phase 0 after "{", 1 after ",", 2 after a key (`value` is its
#                                    schema), 3 after a value
#   ("A", node, count, phase)        an array: phase 0 after "[", 1 after a value, 2 after ","

_Frame = tuple[Any, ...]
_Stack = tuple[_Frame, ...]
_Alt = tuple[_Stack, int]


class JsonSchemaPrefix:
    """Is the text fed so far the beginning of one JSON object valid under a compiled schema, and where does
    it end? Same interface as `JsonObjectPrefix`."""

    __slots__ = ("_alts", "_max_whitespace")

    def __init__(self, root: SchemaNode, max_whitespace: int | None = None):
        self._alts: list[_Alt] = [((("V", root),), -1)]  # -1: nothing yet, no leading whitespace
        self._max_whitespace = max_whitespace

    def copy(self) -> JsonSchemaPrefix:
        other = JsonSchemaPrefix.__new__(JsonSchemaPrefix)
        other._alts = list(self._alts)
        other._max_whitespace = self._max_whitespace
        return other

    @property
    def in_string(self) -> bool:
        return any(stack and _in_string(stack[-1]) for stack, _ in self._alts)

    @property
    def done(self) -> bool:
        return any(not stack for stack, _ in self._alts)

    def feed(self, text: str) -> tuple[bool, int | None]:
        """Advance over `text`. Returns (still valid, chars consumed when the object closed, else None).
        Characters after the closing brace are not consumed; after an invalid one the state is undefined."""
        for index, char in enumerate(text):
            following: dict[_Alt, None] = {}
            for stack, ws in self._alts:
                for alt in self._step(stack, ws, char):
                    following[alt] = None
            if not following:
                self._alts = []
                return False, None
            self._alts = list(following)
            if self.done:
                self._alts = [((), 0)]
                return True, index + 1
        return True, None

    def _whitespace_limit(self, stack: _Stack) -> int:
        """Longest whitespace run here: a line break and four spaces of indent per open container, enough for
        pretty-printed JSON (and at most `max_whitespace`). Tighter than json_object's flat limit because a
        schema's reply is long: a model fond of blank lines would otherwise run out of tokens before the end."""
        depth = sum(1 for frame in stack if frame[0] in "OA")
        limit = 1 + 4 * depth
        return limit if self._max_whitespace is None else min(limit, self._max_whitespace)

    def _step(self, stack: _Stack, ws: int, c: str) -> list[_Alt]:
        if not stack:
            return []
        top = stack[-1]
        kind = top[0]
        rest = stack[:-1]
        if kind == "S":
            escape = top[1]
            if escape == 0:
                if c == '"':
                    return [(rest, 0)]
                if c == "\\":
                    return [((*rest, ("S", -1)), 0)]
                return [] if c < " " else [(stack, 0)]
            if escape == -1:
                if c == "u":
                    return [((*rest, ("S", 4)), 0)]
                return [((*rest, ("S", 0)), 0)] if c in '"\\/bfnrt' else []
            return [((*rest, ("S", escape - 1 if escape > 1 else 0)), 0)] if c in _HEX else []
        if kind == "L":
            text, pos = top[1], top[2]
            if text[pos] != c:
                return []
            return [(rest, 0)] if pos + 1 == len(text) else [((*rest, ("L", text, pos + 1)), 0)]
        if kind == "N":
            state = _number_step(top[1], c, top[2])
            if state is not None:
                return [((*rest, ("N", state, top[2])), 0)]
            if top[1] not in _NUMBER_END:
                return []
            return self._step(rest, 0, c)  # the number ended; `c` follows it
        if c in _WHITESPACE:
            if ws < 0 or ws >= self._whitespace_limit(stack):
                return []
            return [(stack, ws + 1)]
        ws = 0
        if kind == "V":
            return [(s, 0) for s in _start(top[1], c, rest)]
        if kind == "O":
            return [(s, 0) for s in _object_step(top, c, rest)]
        return [(s, 0) for s in _array_step(top, c, rest)]


def _in_string(frame: _Frame) -> bool:
    """Inside a free string, where a token holding half a character may wait for its other half. Not inside a
    literal (a key, an enum value): what it continues with is known, and half a character is not it."""
    return frame[0] == "S" and frame[1] == 0


def _start(node: SchemaNode, c: str, rest: _Stack) -> list[_Stack]:
    """The stacks after `c` begins a value of `node` (whose parent frames are `rest`)."""
    node = node.resolved()
    kind = node.kind
    if kind == "anyof":
        stacks: dict[_Stack, None] = {}
        for option in node.options:
            stacks.update(dict.fromkeys(_start(option, c, rest)))
        return list(stacks)
    if kind == "literal":
        return [rest if len(text) == 1 else (*rest, ("L", text, 1)) for text in node.literals if text[0] == c]
    if c == "{" and kind in ("object", "any"):
        return [(*rest, ("O", node, frozenset(), 0, None))]
    if c == "[" and kind in ("array", "any"):
        return [(*rest, ("A", node, 0, 0))]
    if c == '"' and kind in ("string", "any"):
        return [(*rest, ("S", 0))]
    if (c == "-" or "0" <= c <= "9") and kind in ("number", "integer", "any"):
        return [(*rest, ("N", {"-": "minus", "0": "zero"}.get(c, "int"), kind == "integer"))]
    literal = {"t": ("true", "boolean"), "f": ("false", "boolean"), "n": ("null", "null")}.get(c)
    if literal is not None and kind in (literal[1], "any"):
        return [(*rest, ("L", literal[0], 1))]
    return []


def _object_step(frame: _Frame, c: str, rest: _Stack) -> list[_Stack]:
    _, node, seen, phase, value = frame
    if phase == 2:
        return [(*rest, ("O", node, seen, 3, None), ("V", value))] if c == ":" else []
    if c == "}" and phase in (0, 3):
        return [rest] if node.kind == "any" or node.required <= seen else []
    if c == "," and phase == 3:
        return [(*rest, ("O", node, seen, 1, None))] if _more_keys(node, seen) else []
    if c != '"' or phase not in (0, 1):
        return []
    if node.kind == "any":
        return [(*rest, ("O", node, seen, 2, _ANY), ("S", 0))]
    stacks: list[_Stack] = []
    for name, sub in node.properties.items():
        if name not in seen:
            key = json.dumps(name, ensure_ascii=False)[1:]
            stacks.append((*rest, ("O", node, seen | {name}, 2, sub), ("L", key, 0)))
    return stacks


def _more_keys(node: SchemaNode, seen: frozenset[str]) -> bool:
    return node.kind == "any" or any(name not in seen for name in node.properties)


def _array_step(frame: _Frame, c: str, rest: _Stack) -> list[_Stack]:
    _, node, count, phase = frame
    limit = None if node.kind == "any" else node.max_items
    if c == "]" and phase in (0, 1):
        return [rest] if node.kind == "any" or count >= node.min_items else []
    if c == "," and phase == 1:
        return [(*rest, ("A", node, count, 2))] if limit is None or count < limit else []
    if phase == 1 or (limit is not None and count >= limit):
        return []
    items = _ANY if node.kind == "any" or node.items is None else node.items
    return _start(items, c, (*rest, ("A", node, count + 1, 1)))


def _number_step(state: str, c: str, integer: bool) -> str | None:
    """The number's next sub-state on `c`; None when `c` is not part of the number."""
    if "0" <= c <= "9":
        following = {"minus": "int" if c != "0" else "zero", "int": "int", "dot": "frac", "frac": "frac"}
        following |= {"exp": "expdigits", "expsign": "expdigits", "expdigits": "expdigits"}
        return following.get(state)
    if integer:
        return None
    if c == "." and state in ("zero", "int"):
        return "dot"
    if c in "eE" and state in ("zero", "int", "frac"):
        return "exp"
    if c in "+-" and state == "exp":
        return "expsign"
    return None
