"""`score_model` and `label_model`: a judge model reads the rendered `input` messages and answers.

The judge is whatever the caller passes (`Judge`: model name, chat messages, sampling params -> answer
text); the service builds one on its inference engine, so the judge is a model this server serves.

Messages: each `input` entry is `{"role", "content"}` (`type: "message"` optional); content is a string,
one `input_text`/`output_text` part or a list of them, each rendered as a template. The judge gets plain
chat messages `{"role", "content": text}`, parts joined by a blank line; the `developer` role is sent as
`system` (chat templates of open models know no `developer`). Image and audio parts make the grader
invalid: openft's judges are text models.

Answers: `score_model` takes the number the judge wrote — the whole answer as a number, a JSON object's
`result` (OpenAI's structured answer) or `score`, or else the only number in the text — and it must lie in
`range` (default [0, 1]); the reward is that number. `label_model` takes the answer (or a JSON object's
`result`/`label`), trimmed of whitespace, quotes and a final full stop, matched exactly or else ignoring case;
it must be one of `labels`, and the reward is 1.0 when it is one of `passing_labels`, else 0.0. An answer
that does not parse is `model_grader_parse_error`; a judge that raises is `model_grader_server_error`.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from openft.graders import templates
from openft.graders.base import GraderInvalid, Judge, JudgeCall, SampleError, require_str

ROLES = ("user", "assistant", "system", "developer")
TEXT_PARTS = ("input_text", "output_text")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def validate(grader: dict[str, Any], param: str) -> None:
    require_str(grader, "model", param)
    messages = grader.get("input")
    if not isinstance(messages, list) or not messages:
        raise GraderInvalid("`input` must be a non-empty list of messages", param=f"{param}.input")
    for i, message in enumerate(messages):
        where = f"{param}.input[{i}]"
        if not isinstance(message, dict):
            raise GraderInvalid("must be a message object with `role` and `content`", param=where)
        if message.get("role") not in ROLES:
            raise GraderInvalid(f"`role` must be one of {', '.join(ROLES)}", param=f"{where}.role")
        if message.get("type", "message") != "message":
            raise GraderInvalid("`type` must be `message`", param=f"{where}.type")
        for j, part in _parts(message.get("content"), f"{where}.content"):
            if isinstance(part, str):
                templates.check(part, f"{where}.content")
                continue
            kind = part.get("type") if isinstance(part, dict) else None
            part_param = f"{where}.content" if j is None else f"{where}.content[{j}]"
            if kind not in TEXT_PARTS:
                raise GraderInvalid(
                    f"content of type `{kind}` is not supported: openft's judge models read text only "
                    f"({' and '.join(TEXT_PARTS)})",
                    param=part_param,
                )
            templates.check(part.get("text"), f"{part_param}.text")
    if grader["type"] == "score_model":
        _validate_score(grader, param)
    else:
        _validate_labels(grader, param)


def _parts(content: Any, param: str) -> list[tuple[int | None, Any]]:
    if isinstance(content, str | dict):
        return [(None, content)]
    if isinstance(content, list) and content:
        return list(enumerate(content))
    raise GraderInvalid("`content` must be a string, a content part or a non-empty list of parts", param=param)


def _validate_score(grader: dict[str, Any], param: str) -> None:
    bounds = grader.get("range", [0, 1])
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, int | float) and not isinstance(b, bool) and math.isfinite(b) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise GraderInvalid("`range` must be two numbers [min, max] with min < max", param=f"{param}.range")
    params = grader.get("sampling_params")
    if params is not None and not isinstance(params, dict):
        raise GraderInvalid("`sampling_params` must be an object", param=f"{param}.sampling_params")
    for key, kind in (("temperature", (int, float)), ("top_p", (int, float)), ("seed", (int,))):
        value = (params or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise GraderInvalid(f"`{key}` must be a number", param=f"{param}.sampling_params.{key}")
    for key in ("max_completions_tokens", "max_completion_tokens"):
        value = (params or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise GraderInvalid(f"`{key}` must be a positive integer", param=f"{param}.sampling_params.{key}")


def _validate_labels(grader: dict[str, Any], param: str) -> None:
    labels = grader.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise GraderInvalid("`labels` must be a non-empty list of strings", param=f"{param}.labels")
    passing = grader.get("passing_labels")
    if not isinstance(passing, list) or not all(isinstance(x, str) for x in passing):
        raise GraderInvalid("`passing_labels` must be a list of strings", param=f"{param}.passing_labels")
    outside = [x for x in passing if x not in labels]
    if outside:
        raise GraderInvalid(
            f"`passing_labels` must be a subset of `labels`; not in labels: {', '.join(outside)}",
            param=f"{param}.passing_labels",
        )


def render_messages(grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any]) -> list[dict[str, Any]]:
    messages = []
    for message in grader["input"]:
        texts = []
        for _, part in _parts(message["content"], "input"):
            texts.append(templates.render(part if isinstance(part, str) else part["text"], sample, item))
        role = "system" if message["role"] == "developer" else message["role"]
        messages.append({"role": role, "content": "\n\n".join(texts)})
    return messages


def sampling_params(grader: dict[str, Any]) -> dict[str, Any]:
    given = grader.get("sampling_params") or {}
    params = {key: given[key] for key in ("temperature", "top_p", "seed") if given.get(key) is not None}
    max_tokens = given.get("max_completion_tokens", given.get("max_completions_tokens"))  # the spec's spelling too
    if max_tokens is not None:
        params["max_completion_tokens"] = max_tokens
    return params


def ask(
    grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], judge: Judge, calls: list[JudgeCall]
) -> str:
    messages = render_messages(grader, sample, item)
    params = sampling_params(grader)
    started = time.monotonic()
    call = JudgeCall(model=grader["model"], messages=messages, sampling_params=params, answer=None, seconds=0.0)
    calls.append(call)
    try:
        answer = judge(grader["model"], messages, params)
    except Exception as exc:  # the judge failed for this sample; the trainer goes on with reward 0
        call.seconds = time.monotonic() - started
        detail = f"{type(exc).__name__}: {exc}"
        raise SampleError(
            "model_grader_server_error",
            f"the judge model failed: {detail}",
            details={"model_grader_server_error_details": detail},
        ) from exc
    call.seconds = time.monotonic() - started
    call.answer = answer
    if not isinstance(answer, str):
        raise SampleError("model_grader_parse_error", "the judge model gave no text answer")
    return answer


def parse_score(answer: str, bounds: list[float]) -> float:
    text = answer.strip()
    value: Any = None
    try:
        value = json.loads(text)
    except ValueError:
        found = _NUMBER.findall(text)
        value = found[0] if len(found) == 1 else None
    if isinstance(value, dict):
        value = value.get("result", value.get("score"))
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SampleError("model_grader_parse_error", f"the judge's answer is not a score: {answer[:200]!r}")
    if not bounds[0] <= value <= bounds[1]:
        raise SampleError(
            "model_grader_parse_error", f"the judge's score {value} is outside the range [{bounds[0]}, {bounds[1]}]"
        )
    return float(value)


def parse_label(answer: str, labels: list[str]) -> str:
    text = answer.strip()
    try:
        value = json.loads(text)
        if isinstance(value, dict):
            value = value.get("result", value.get("label"))
        if isinstance(value, str):
            text = value
    except ValueError:
        pass
    text = text.strip().strip("\"'`*").strip()
    if text.endswith(".") and text not in labels:
        text = text[:-1]
    if text in labels:
        return text
    folded = [label for label in labels if label.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise SampleError(
        "model_grader_parse_error", f"the judge's answer {answer[:200]!r} is not one of the labels {labels}"
    )


def grade_score(
    grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], judge: Judge, calls: list[JudgeCall]
) -> float:
    return parse_score(ask(grader, sample, item, judge, calls), grader.get("range", [0, 1]))


def grade_label(
    grader: dict[str, Any], sample: dict[str, Any], item: dict[str, Any], judge: Judge, calls: list[JudgeCall]
) -> float:
    label = parse_label(ask(grader, sample, item, judge, calls), grader["labels"])
    return 1.0 if label in grader["passing_labels"] else 0.0
