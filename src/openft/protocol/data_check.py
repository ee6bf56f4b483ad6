"""The data-check report (`GET /v1/files/{id}/check`, `openft data check --json`): openft's extension.

Built by `openft.datacheck.CheckReport.to_json`; these models only document (and check) its shape in
/openapi.json, so the dashboard and scripts can rely on it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from openft.trainer_contract import TrainingMethod


class DataCheckProblem(BaseModel):
    line: int | None = Field(description="1-based line of the file; null for whole-file problems.")
    code: str = Field(description="The job error code the problem would fail a job with (invalid_file_format, …).")
    message: str


class TokenStats(BaseModel):
    min: int
    mean: float
    max: int


class DataCheckStats(BaseModel):
    examples: int = Field(description="Valid examples (preference pairs for dpo).")
    tokens: TokenStats = Field(description="Tokens per example with the model's chat template (both sides of a pair).")
    total_tokens: int
    over_context: int = Field(description="Examples longer than context_length; training truncates them.")
    context_length: int = Field(description="The trainer's max_seq_length: the model's context, at most 2048.")
    over_context_lines: list[int] = Field(description="The first (up to 20) lines over the context.")


class DataCheckAuto(BaseModel):
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class DataCheckEstimate(BaseModel):
    seconds: float | None = Field(description="Estimated training time (steps only; no evaluations or checkpoints).")
    tokens_per_second: float
    source: Literal["measured", "table"] = Field(description="A short measured run (CLI) or the throughput table.")
    device: str
    detail: str


class DataCheckMemory(BaseModel):
    fine_tuning_mode: Literal["lora", "qlora", "full"]
    max_seq_length: int = Field(
        description="The job's sequence cap (the check's context_length): whether it fits at all."
    )
    longest_sequence: int = Field(
        description="Tokens of the file's longest sequence (cut at max_seq_length; DPO: per answer): what the "
        "micro-batch and peak are planned for."
    )
    micro_batch_size: int = Field(description="Examples per forward pass the trainer would pick on this machine.")
    gradient_checkpointing: bool = Field(description="Whether the trainer would recompute activations here.")
    peak_bytes: int = Field(description="Estimated peak memory of a training step on this machine's device.")
    device: str = Field(description="This machine's training device (cpu, or cuda and the GPU's name).")
    available_bytes: int | None = Field(description="Memory free on that device (null: unknown).")
    fits: bool | None = Field(description="Whether a job fits that device (null: its free memory is unknown).")
    fits_on: list[str] = Field(description='Devices a job fits: "cpu" (this machine\'s RAM), "24 GB", "80 GB" GPUs.')
    detail: str = Field(description="The largest parts of the estimate; what would fit when nothing does here.")


class DataCheckReport(BaseModel):
    object: Literal["openft.data_check"] = "openft.data_check"
    file: str | None = Field(description="The file's id; null for a local file (`openft data check`).")
    filename: str
    method: TrainingMethod
    model: str
    ok: bool = Field(description="True when a job would accept the file (the part checked, when truncated).")
    problems: list[DataCheckProblem] = Field(description="Sorted by line; at most 100 (n_problems counts all).")
    n_problems: int
    stats: DataCheckStats | None = Field(description="Null when no example is valid.")
    auto: DataCheckAuto | None
    steps: int | None
    estimate: DataCheckEstimate | None
    memory: DataCheckMemory | None = Field(
        default=None, description="The memory planner's estimate for a job on this file; null when no example is valid."
    )
    notes: list[str]
    truncated: bool = Field(
        default=False,
        description="A time or size budget (OPENFT_DATA_CHECK_SECONDS, OPENFT_DATA_CHECK_MAX_BYTES) cut the check "
        "short: problems and statistics cover only the part checked (a note says which). A job checks the whole file.",
    )
    checked_examples: int | None = Field(
        default=None, description="With truncated: the examples whose tokens were counted."
    )
