"""Graders API wire objects (OpenAI `RunGraderRequest`, `RunGraderResponse`, `ValidateGraderRequest`,
`ValidateGraderResponse`).

A grader is kept as plain JSON here: `openft.graders.validate` checks it (every grader type, nested graders,
templates, formulas) and answers a 400 naming the exact field (`grader.operation`, `grader.graders.a.model`),
which a pydantic union could not do as precisely. The documented `/openapi.json` therefore types `grader` as
an object; its members are OpenAI's `Grader*` schemas.

Sizes are bounded so that one request cannot make the server grade megabytes: a model sample of at most
`MAX_MODEL_SAMPLE_CHARS` characters here, and (checked in services/graders.py, off the event loop) an item
and a grader of at most `MAX_ITEM_BYTES` and `MAX_GRADER_BYTES` as JSON.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from openft.protocol.common import LenientModel

MAX_MODEL_SAMPLE_CHARS = 64 * 1024
"""Longest `model_sample` (characters): what one reply of a model being fine-tuned plausibly is, with room."""
MAX_ITEM_BYTES = 256 * 1024
"""Largest `item`, as compact JSON (bytes): a dataset line's reference data."""
MAX_GRADER_BYTES = 1024 * 1024
"""Largest `grader`, as compact JSON (bytes). A python grader's `source` has its own, smaller limit (256 KiB,
as OpenAI's; `openft.graders.python_grader`), met first."""

GRADER_DESCRIPTION = (
    "The grader: a string_check, text_similarity, python, score_model or multi grader, as OpenAI's "
    "GraderStringCheck, GraderTextSimilarity, GraderPython, GraderScoreModel and GraderMulti schemas describe "
    "it. A score_model (or label_model) grader's `model` is any model the key may use on this server."
)


class RunGraderRequest(LenientModel):
    grader: Annotated[dict[str, Any], Field(description=GRADER_DESCRIPTION)]
    model_sample: Annotated[
        str,
        Field(
            max_length=MAX_MODEL_SAMPLE_CHARS,
            description="The model sample to grade (`sample.output_text`; `sample.output_json` when it is JSON).",
        ),
    ]
    item: Annotated[
        dict[str, Any] | None,
        Field(description=f"The dataset item (`item.*` in templates), at most {MAX_ITEM_BYTES} bytes as JSON."),
    ] = None


class ValidateGraderRequest(LenientModel):
    grader: Annotated[dict[str, Any], Field(description=GRADER_DESCRIPTION)]


class ValidateGraderResponse(BaseModel):
    """The grader as sent, once it passed every check."""

    grader: dict[str, Any]


class GraderRunErrors(BaseModel):
    """What went wrong while grading, flag by flag, as OpenAI reports it: a grader that fails on the sample
    (a python grader raises, a judge's answer holds no score) scores 0 with its flag set, not an HTTP error."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None


class GraderRunMetadata(BaseModel):
    name: str
    type: str
    errors: GraderRunErrors
    execution_time: float
    """Seconds spent grading (the judge's generations and the python grader's process included)."""
    scores: dict[str, Any] = Field(default_factory=dict)
    token_usage: int | None = None
    """Tokens the judge models used (prompt and completion), or null when no model graded."""
    sampled_model_name: str | None = None
    """The judge model that answered (the last one, for a multi grader with several)."""


class ModelTokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class RunGraderResponse(BaseModel):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any] = Field(default_factory=dict)
    """A multi grader's sub-graders' scores, by name."""
    model_grader_token_usage_per_model: dict[str, ModelTokenUsage] = Field(default_factory=dict)
