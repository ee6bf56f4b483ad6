"""Grader templates: `{{ item.answer }}`, `{{ sample.output_json.steps[0].value }}`, substituted, never executed.

OpenAI's graders guide: any `{{ }}` holds a namespace (`item` or `sample`) and a JSON-path-like variable;
nested values are reached with `.key` and `[index]` (`['key']` too, for keys that are not plain words). A
string is substituted as it is, anything else (number, list, object, null) as its JSON text. Only lookups
are ever done: no expressions, filters or calls, so a template cannot run code (unlike Jinja).

A malformed `{{ }}` or another namespace makes the grader invalid (found by `check`, at validation); a path
that is absent from this item or sample is a sample error (`invalid_variable_error`), reward 0.
"""

from __future__ import annotations

import json
import re
from typing import Any

from openft.graders.base import GraderInvalid, SampleError

_TAG = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_SEGMENT = re.compile(
    r"""\.(?P<key>[^.\[\]\s]+)|\[\s*(?P<index>-?\d+)\s*\]|\[\s*(?P<q>['"])(?P<qkey>.*?)(?P=q)\s*\]""",
)
NAMESPACES = ("item", "sample")

Path = tuple[str, list[str | int]]


def parse_path(expression: str) -> Path | None:
    """`sample.output_json.a[0]` -> ("sample", ["output_json", "a", 0]); None when not a valid path."""
    text = expression.strip()
    head = re.match(r"[A-Za-z_]\w*", text)
    if head is None:
        return None
    namespace, pos, segments = head.group(0), head.end(), []
    while pos < len(text):
        m = _SEGMENT.match(text, pos)
        if m is None:
            return None
        if m.group("key") is not None:
            segments.append(m.group("key"))
        elif m.group("index") is not None:
            segments.append(int(m.group("index")))
        else:
            segments.append(m.group("qkey"))
        pos = m.end()
    return namespace, segments


def check(template: Any, param: str) -> None:
    """Raise GraderInvalid when `template` is not a string or holds a tag this module cannot look up."""
    if not isinstance(template, str):
        raise GraderInvalid("must be a string", param=param)
    for m in _TAG.finditer(template):
        path = parse_path(m.group(1))
        if path is None:
            raise GraderInvalid(f"`{{{{{m.group(1)}}}}}` is not a variable path like `item.answer`", param=param)
        if path[0] not in NAMESPACES:
            raise GraderInvalid(
                f"`{{{{{m.group(1)}}}}}`: the namespace must be `item` or `sample`, not `{path[0]}`", param=param
            )


def lookup(path: Path, namespaces: dict[str, Any]) -> Any:
    namespace, segments = path
    value = namespaces[namespace]
    walked = namespace
    for seg in segments:
        index = seg if isinstance(seg, int) else int(seg) if seg.isdigit() else None  # `a.0`, as JSON paths write it
        if isinstance(value, dict) and isinstance(seg, str) and seg in value:
            value = value[seg]
        elif isinstance(value, list) and index is not None and -len(value) <= index < len(value):
            value = value[index]
        else:
            shown = f"[{seg}]" if isinstance(seg, int) else f".{seg}"
            raise SampleError("invalid_variable_error", f"`{walked}{shown}` is not in this {namespace}")
        walked += f"[{seg}]" if isinstance(seg, int) else f".{seg}"
    return value


def as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render(template: str, sample: dict[str, Any], item: dict[str, Any]) -> str:
    """Substitute every `{{ }}` of a template `check` accepted."""
    namespaces = {"item": item, "sample": sample}

    def one(m: re.Match[str]) -> str:
        path = parse_path(m.group(1))
        assert path is not None and path[0] in NAMESPACES, m.group(0)  # check() ran at validation
        return as_text(lookup(path, namespaces))

    return _TAG.sub(one, template)
