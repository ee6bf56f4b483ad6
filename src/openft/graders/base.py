"""What every grader type shares: the invalid-grader error, the result, and the sample-level error.

Two kinds of failure, kept apart on purpose (OpenAI's graders API does the same): a grader that cannot run
at all (`GraderInvalid`, a 400 naming the parameter) and a grader that ran but could not grade this one
sample (`SampleError`: the reward is 0 and one of OpenAI's `metadata.errors` flags says why). A trainer
grading thousands of samples must never stop on the second kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openft.errors import InvalidRequest

# (judge model name, chat messages, sampling params) -> the judge's answer text.
Judge = Callable[[str, list[dict[str, Any]], dict[str, Any]], str]
# texts -> one embedding vector per text (for text_similarity's `cosine`).
Embed = Callable[[list[str]], list[list[float]]]

# OpenAI's RunGraderResponse.metadata.errors: the boolean flags, then the text details beside them.
ERROR_FLAGS = (
    "formula_parse_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
    "invalid_variable_error",
    "other_error",
    "python_grader_server_error",
    "python_grader_runtime_error",
    "model_grader_server_error",
    "model_grader_refusal_error",
    "model_grader_parse_error",
)
ERROR_DETAILS = (
    "python_grader_server_error_type",
    "python_grader_runtime_error_details",
    "model_grader_server_error_details",
)


class GraderInvalid(InvalidRequest):
    """The grader cannot run at all: the service answers 400 with `param` naming the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param=param)


class SampleError(Exception):
    """The grader ran but could not grade this sample: reward 0, `flag` set in `metadata.errors`."""

    def __init__(self, flag: str, message: str, *, details: dict[str, str | None] | None = None):
        assert flag in ERROR_FLAGS, flag
        super().__init__(message)
        self.flag = flag
        self.message = message
        self.details = details or {}


@dataclass
class JudgeCall:
    """One call to a judge model (score_model, label_model): what was asked and what came back."""

    model: str
    messages: list[dict[str, Any]]
    sampling_params: dict[str, Any]
    answer: str | None
    seconds: float


@dataclass
class GradeResult:
    reward: float
    sub_rewards: dict[str, float] = field(default_factory=dict)
    errors: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(ERROR_FLAGS, False))
    error_message: str | None = None
    execution_time: float = 0.0
    judge_calls: list[JudgeCall] = field(default_factory=list)
    # the text fields of `metadata.errors` (python_grader_server_error_type, ...), None when unset
    error_details: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(ERROR_DETAILS))
    # how the python grader was isolated on this run (python_grader.Isolation.describe()), else None
    isolation: str | None = None

    @property
    def failed(self) -> bool:
        return any(self.errors.values())

    def metadata_errors(self) -> dict[str, Any]:
        """`metadata.errors` exactly as OpenAI's RunGraderResponse spells it: 11 flags and 3 details."""
        return {**self.errors, **self.error_details}


def require_str(grader: dict[str, Any], key: str, param: str) -> str:
    value = grader.get(key)
    if not isinstance(value, str):
        raise GraderInvalid(f"`{key}` is required and must be a string", param=f"{param}.{key}")
    return value
