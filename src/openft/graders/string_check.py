"""`string_check`: compare the rendered input with the rendered reference; 1.0 or 0.0.

OpenAI's graders guide: `eq` (equal, case-sensitive), `ne` (not equal, case-sensitive), `like` (the input
contains the reference, case-sensitive), `ilike` (contains, case-insensitive). No trimming or normalising:
`"Paris "` is not `eq` to `"Paris"`.
"""

from __future__ import annotations

from typing import Any

from openft.graders import templates
from openft.graders.base import GraderInvalid, require_str

OPERATIONS = ("eq", "ne", "like", "ilike")


def validate(grader: dict[str, Any], param: str) -> None:
    for key in ("input", "reference"):
        templates.check(require_str(grader, key, param), f"{param}.{key}")
    if grader.get("operation") not in OPERATIONS:
        raise GraderInvalid(f"`operation` must be one of {', '.join(OPERATIONS)}", param=f"{param}.operation")


def grade(grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any]) -> float:
    text = templates.render(grader["input"], sample, item)
    reference = templates.render(grader["reference"], sample, item)
    operation = grader["operation"]
    if operation == "eq":
        hit = text == reference
    elif operation == "ne":
        hit = text != reference
    elif operation == "like":
        hit = reference in text
    else:
        hit = reference.casefold() in text.casefold()
    return 1.0 if hit else 0.0
