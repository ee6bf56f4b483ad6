"""Graders as OpenAI defines them: string_check, text_similarity, python, score_model, label_model, multi.

The pure core the graders API (`/fine_tuning/alpha/graders/run` and `/validate`) and a reinforcement
trainer share: `validate(grader)` raises `GraderInvalid` for a grader that cannot run (a 400 naming the
parameter); `grade(grader, sample, item, judge)` never raises for a sample it cannot grade — the reward is
then 0 and `GradeResult.errors` carries OpenAI's flag for why. Nothing here knows HTTP, the database or
the inference engine: model graders get their judge as a plain function.

`sample` is OpenAI's `sample` namespace: `{"output_text": str, "output_json": object | None,
"output_tools": [...], "choices": [...]}`; `item` is the dataset row.
"""

from __future__ import annotations

import json
import time
from typing import Any

from openft.graders import formula, model_graders, python_grader, string_check, text_similarity
from openft.graders.base import (
    ERROR_DETAILS,
    ERROR_FLAGS,
    Embed,
    GradeResult,
    GraderInvalid,
    Judge,
    JudgeCall,
    SampleError,
)
from openft.graders.python_grader import PythonLimits

__all__ = [
    "ERROR_DETAILS",
    "ERROR_FLAGS",
    "TYPES",
    "Embed",
    "GradeResult",
    "GraderInvalid",
    "Judge",
    "JudgeCall",
    "PythonLimits",
    "SampleError",
    "grade",
    "sub_graders",
    "text_sample",
    "validate",
]

TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
MAX_SUB_GRADERS = 32


def text_sample(text: str) -> dict[str, Any]:
    """The `sample` of a plain text answer, as OpenAI fills it: the text, and its JSON when it parses (else null)."""
    try:
        parsed: Any = json.loads(text)
    except (ValueError, RecursionError):
        parsed = None
    return {"output_text": text, "output_json": parsed, "output_tools": [], "choices": []}


def validate(grader: dict[str, Any], *, embed: Embed | None = None, param: str = "grader") -> None:
    """Raise GraderInvalid (with `param` naming the field, e.g. `grader.graders.a.source`) if `grader` cannot run."""
    _validate(grader, param, embed, nested=False)


def _validate(grader: Any, param: str, embed: Embed | None, *, nested: bool) -> None:
    if not isinstance(grader, dict):
        raise GraderInvalid("a grader must be an object", param=param)
    kind = grader.get("type")
    if kind not in TYPES or (nested and kind == "multi"):
        allowed = [t for t in TYPES if not (nested and t == "multi")]
        raise GraderInvalid(f"`type` must be one of {', '.join(allowed)}", param=f"{param}.type")
    if not isinstance(grader.get("name"), str):
        raise GraderInvalid("`name` is required and must be a string", param=f"{param}.name")
    if kind == "string_check":
        string_check.validate(grader, param)
    elif kind == "text_similarity":
        text_similarity.validate(grader, param, embed)
    elif kind == "python":
        python_grader.validate(grader, param)
    elif kind in ("score_model", "label_model"):
        model_graders.validate(grader, param)
    else:
        subs = sub_graders(grader, param)
        for name, sub in subs.items():
            _validate(sub, f"{param}.graders.{name}", embed, nested=True)
        formula.parse(grader.get("calculate_output"), subs, f"{param}.calculate_output")


def sub_graders(grader: dict[str, Any], param: str = "grader") -> dict[str, Any]:
    """`multi`'s graders by the name `calculate_output` calls them: the keys of `graders` (OpenAI's guide),
    or the one grader's `name` when `graders` is a single grader (the OpenAPI schema's shape)."""
    graders = grader.get("graders")
    if isinstance(graders, dict) and isinstance(graders.get("type"), str):
        graders = {graders.get("name"): graders}
    if not isinstance(graders, dict) or not graders:
        raise GraderInvalid("`graders` must be an object mapping names to graders", param=f"{param}.graders")
    if len(graders) > MAX_SUB_GRADERS:
        raise GraderInvalid(f"`graders` may hold at most {MAX_SUB_GRADERS} graders", param=f"{param}.graders")
    for name in graders:
        if not isinstance(name, str) or not name.isidentifier():
            raise GraderInvalid(
                f"grader name {name!r} must be a name a formula can use (letters, digits, _)",
                param=f"{param}.graders",
            )
    return graders


def grade(
    grader: dict[str, Any],
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None = None,
    *,
    embed: Embed | None = None,
    python_limits: PythonLimits | None = None,
) -> GradeResult:
    """Grade one sample. Raises GraderInvalid only for an invalid grader (or a model grader with no judge)."""
    validate(grader, embed=embed)
    started = time.monotonic()
    result = GradeResult(reward=0.0)
    sample = {"output_text": "", "output_json": None, "output_tools": [], "choices": [], **sample}
    item = item or {}
    if grader["type"] == "multi":
        _grade_multi(grader, sample, item, judge, embed, python_limits, result)
    else:
        try:
            result.reward = _grade_one(grader, sample, item, judge, embed, python_limits, result, "grader")
        except SampleError as exc:
            _fail(result, exc)
    result.execution_time = time.monotonic() - started
    return result


def _grade_one(
    grader: dict[str, Any],
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None,
    embed: Embed | None,
    limits: PythonLimits | None,
    result: GradeResult,
    param: str,
) -> float:
    kind = grader["type"]
    if kind == "string_check":
        return string_check.grade(grader, sample, item)
    if kind == "text_similarity":
        return text_similarity.grade(grader, sample, item, embed)
    if kind == "python":
        outcome = python_grader.grade(grader, sample, item, limits)
        result.isolation = outcome.isolation
        if outcome.error is not None:
            raise outcome.error
        return outcome.reward
    if judge is None:
        raise GraderInvalid("model graders need a judge model, and none is available here", param=f"{param}.model")
    if kind == "score_model":
        return model_graders.grade_score(grader, sample, item, judge, result.judge_calls)
    return model_graders.grade_label(grader, sample, item, judge, result.judge_calls)


def _grade_multi(
    grader: dict[str, Any],
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None,
    embed: Embed | None,
    limits: PythonLimits | None,
    result: GradeResult,
) -> None:
    """Every sub-grader runs (its reward lands in `sub_rewards`, 0 when it failed); if any failed, the
    multi grader's reward is 0 and its errors carry the failures' flags, else it is `calculate_output`."""
    failures = []
    for name, sub in sub_graders(grader).items():
        try:
            result.sub_rewards[name] = _grade_one(
                sub, sample, item, judge, embed, limits, result, f"grader.graders.{name}"
            )
        except SampleError as exc:
            result.sub_rewards[name] = 0.0
            failures.append(f"{name}: {exc.message}")
            _fail(result, exc)
    if failures:
        result.error_message = "; ".join(failures)
        return
    tree = formula.parse(grader["calculate_output"], result.sub_rewards, "grader.calculate_output")
    try:
        result.reward = formula.evaluate(tree, result.sub_rewards)
    except SampleError as exc:
        _fail(result, exc)


def _fail(result: GradeResult, exc: SampleError) -> None:
    result.reward = 0.0
    result.errors[exc.flag] = True
    result.error_message = exc.message
    for key, value in exc.details.items():
        if value is not None and result.error_details.get(key) is None:
            result.error_details[key] = value
