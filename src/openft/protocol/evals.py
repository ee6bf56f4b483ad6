"""The Evals API's wire objects (OpenAI `Eval`, `EvalRun`, `EvalRunOutputItem`, their lists, the create bodies).

The request bodies keep `data_source_config`, `testing_criteria` and `data_source` as plain JSON: the service
checks them (services/evals.py, graders through `openft.graders.validate`) and answers a 400 naming the exact
field (`testing_criteria[0].operation`, `data_source.source.content[3].item`), which a pydantic union could
not do as precisely.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openft.protocol.common import LenientModel

MAX_CRITERIA = 32
"""Testing criteria per eval."""
MAX_RUN_ITEMS = 10_000
"""Items per run (lines of a `file_id` source, entries of a `file_content` source)."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""Largest `file_id` source. A `file_content` source is bounded by the JSON request limit (16 MiB)."""
MAX_ITEM_BYTES = 256 * 1024
"""Largest item (and sample) of a data source, as compact JSON: the graders API's bound on `item`."""
DEFAULT_MAX_COMPLETION_TOKENS = 1024
"""A completions run's `sampling_params.max_completion_tokens` when not given."""
RunStatus = Literal["queued", "in_progress", "completed", "failed", "canceled"]


class CreateEvalRequest(LenientModel):
    name: str | None = None
    metadata: dict[str, str] | None = None
    data_source_config: dict[str, Any]
    testing_criteria: list[Any]


class UpdateEvalRequest(LenientModel):
    name: str | None = None
    metadata: dict[str, str] | None = None


class CreateEvalRunRequest(LenientModel):
    name: str | None = None
    metadata: dict[str, str] | None = None
    data_source: dict[str, Any]


class Eval(BaseModel):
    object: Literal["eval"] = "eval"
    id: str
    name: str
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    created_at: int
    metadata: dict[str, str] | None = None


class EvalList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Eval]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class DeleteEvalResponse(BaseModel):
    object: Literal["eval.deleted"] = "eval.deleted"
    deleted: bool = True
    eval_id: str


class EvalApiError(BaseModel):
    code: str
    message: str


class EvalRunResultCounts(BaseModel):
    total: int = 0
    errored: int = 0
    failed: int = 0
    passed: int = 0


class EvalRunModelUsage(BaseModel):
    model_name: str
    invocation_count: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0


class EvalRunCriteriaResult(BaseModel):
    testing_criteria: str
    passed: int = 0
    failed: int = 0


class EvalRun(BaseModel):
    object: Literal["eval.run"] = "eval.run"
    id: str
    eval_id: str
    status: RunStatus
    model: str | None = None
    name: str
    created_at: int
    report_url: str
    result_counts: EvalRunResultCounts
    per_model_usage: list[EvalRunModelUsage] = Field(default_factory=list)
    per_testing_criteria_results: list[EvalRunCriteriaResult] = Field(default_factory=list)
    data_source: dict[str, Any]
    metadata: dict[str, str] | None = None
    error: EvalApiError | None = None


class EvalRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRun]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class DeleteEvalRunResponse(BaseModel):
    object: Literal["eval.run.deleted"] = "eval.run.deleted"
    deleted: bool = True
    run_id: str


class EvalRunOutputItemResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None = None


class EvalRunOutputItem(BaseModel):
    object: Literal["eval.run.output_item"] = "eval.run.output_item"
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: str
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[EvalRunOutputItemResult]
    sample: dict[str, Any]


class EvalRunOutputItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvalRunOutputItem]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False
