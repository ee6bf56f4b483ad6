"""Fine-tuning wire objects: the create request, the job, its events and checkpoints.

Requests are strict (`extra="forbid"`): a misspelled hyperparameter is a 400 naming it. Field
limits follow OpenAI's published schema (docs/api-compatibility.md §4); the suffix is narrowed to
`[A-Za-z0-9._-]` because it becomes part of a model name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from openft.protocol.common import StrictModel

Auto = Literal["auto"]
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
SUFFIX_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
MAX_SEED = 2_147_483_647
TRAINING_TYPES = {0: "Standard", 1: "GlobalStandard", 2: "Developer"}
"""Azure's `trainingType` numbers (what litellm sends) and the names its docs use: Standard (regional), Global
(GlobalStandard) and Developer, in the order Azure documents them; 0 is Standard (Azure answers 0 and "Standard"
alike)."""


def _azure_auto(value: Any) -> Any:
    """Azure's dated API examples send -1 to mean "auto"; accept it as such."""
    return "auto" if value == -1 and not isinstance(value, bool) else value


Weight = Annotated[StrictFloat | StrictInt, Field(ge=0, le=100)]
IGNORED_HYPERPARAMETERS = ("prompt_loss_weight", "l2_multiplier")
"""Azure's extra hyperparameters: accepted so its documented calls work, never passed to the trainer. openft learns
only the assistant tokens (the prompt is masked), which is `prompt_loss_weight` 0; any other value, and every
`l2_multiplier`, is ignored, and the job says so in a `warn` event (services/fine_tuning.py)."""


class Hyperparameters(StrictModel):
    batch_size: Auto | Annotated[StrictInt, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[StrictFloat | StrictInt, Field(gt=0, le=100)] = "auto"
    n_epochs: Auto | Annotated[StrictInt, Field(ge=1, le=50)] = "auto"
    prompt_loss_weight: Weight | None = None

    _azure = field_validator("batch_size", "learning_rate_multiplier", "n_epochs", mode="before")(_azure_auto)


ModuleName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,64}$")]
MAX_WORKERS = 64
MAX_GPUS_PER_WORKER = 16


class ComputeOptions(StrictModel):
    """`compute`: how many trainer processes a job runs (ranks on one machine: training/launcher.py), GPUs each.

    `gpus_per_worker` defaults to 1 on a machine with GPUs and 0 elsewhere (the worker decides: it knows the
    machine); whether the machine can hold the job is checked when the job is created (a 400 naming `compute`).
    """

    workers: Annotated[StrictInt, Field(ge=1, le=MAX_WORKERS)] = 1
    gpus_per_worker: Annotated[StrictInt, Field(ge=0, le=MAX_GPUS_PER_WORKER)] | None = None


class TrainingOptions(StrictModel):
    """openft's documented extensions of `method.<type>.hyperparameters` (the SDKs pass extra keys through).

    Defaults: LoRA r=16, alpha=32, dropout 0.05 on all linear layers; sequences up to the model's context
    (capped at 2048 tokens); packing on; precision "auto" (bf16 autocast on CUDA and on CPUs with native bf16,
    else fp32 — see training/precision.py); gradient checkpointing "auto" (on when a micro-batch's activations
    would not fit — see training/memory_plan.py); `fine_tuning_mode: "qlora"` loads the base 4-bit NF4 (bitsandbytes)
    under LoRA; `compile` off; `compute` one worker.
    """

    fine_tuning_mode: Literal["lora", "qlora", "full"] | None = None
    lora_rank: Annotated[StrictInt, Field(ge=1, le=512)] | None = None
    lora_alpha: Annotated[StrictFloat | StrictInt, Field(gt=0, le=4096)] | None = None
    lora_dropout: Annotated[StrictFloat | StrictInt, Field(ge=0, lt=1)] | None = None
    lora_target_modules: (
        Literal["all-linear"] | Annotated[list[ModuleName], Field(min_length=1, max_length=64)] | None
    ) = None
    max_seq_length: Annotated[StrictInt, Field(ge=16, le=32768)] | None = None
    packing: StrictBool | None = None
    precision: Literal["auto", "fp32", "bf16"] | None = None
    gradient_checkpointing: Literal["auto"] | StrictBool | None = None
    compile: StrictBool | None = None
    compute: ComputeOptions | None = None

    @model_validator(mode="after")
    def _lora_options_need_lora(self) -> TrainingOptions:
        if self.fine_tuning_mode == "full":
            for name in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} applies to LoRA; fine_tuning_mode 'full' trains all weights")
        return self


class SupervisedHyperparameters(Hyperparameters, TrainingOptions):
    pass


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Auto | Annotated[StrictFloat | StrictInt, Field(gt=0, le=2)] = "auto"
    l2_multiplier: Weight | None = None

    _azure_beta = field_validator("beta", mode="before")(_azure_auto)


class ReinforcementHyperparameters(Hyperparameters, TrainingOptions):
    """OpenAI's reinforcement hyperparameters, plus openft's training options and `max_completion_tokens` (the
    longest answer sampled per prompt, default 64: OpenAI sets its own). `compute_multiplier` scales the answers
    sampled per prompt (4 × it, at least 2); `reasoning_effort` has no meaning for the models openft trains and is
    accepted with a warn event unless "default"."""

    eval_interval: Auto | Annotated[StrictInt, Field(ge=1, le=100_000)] = "auto"
    eval_samples: Auto | Annotated[StrictInt, Field(ge=1, le=10_000)] = "auto"
    compute_multiplier: Auto | Annotated[StrictFloat | StrictInt, Field(ge=0.5, le=16)] = "auto"
    reasoning_effort: Literal["default", "low", "medium", "high"] = "default"
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=4096)] | None = None

    _azure_rft = field_validator("eval_interval", "eval_samples", "compute_multiplier", mode="before")(_azure_auto)


class ReinforcementMethod(StrictModel):
    grader: dict[str, Any]
    """Checked by openft.graders (services/fine_tuning.py): a grader that cannot run is a 400 naming its field."""
    hyperparameters: ReinforcementHyperparameters | None = None


class SupervisedMethod(StrictModel):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(StrictModel):
    hyperparameters: DpoHyperparameters | None = None


class Method(StrictModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None


class WandbIntegration(StrictModel):
    project: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(max_length=128)] | None = None
    entity: Annotated[str, Field(max_length=128)] | None = None
    tags: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=32)] | None = None


class Integration(StrictModel):
    type: Literal["wandb"]
    wandb: WandbIntegration


class FineTuningJobCreate(StrictModel):
    """`POST /fine_tuning/jobs` body (OpenAI `CreateFineTuningJobRequest`)."""

    model: Annotated[str, Field(min_length=1, max_length=256)]
    training_file: Annotated[str, Field(min_length=1, max_length=64)]
    validation_file: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: Annotated[str, Field(pattern=SUFFIX_PATTERN)] | None = None
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] | None = None
    metadata: dict[str, str] | None = None
    integrations: Annotated[list[Integration], Field(max_length=5)] | None = None
    trainingType: Annotated[str, Field(max_length=64)] | StrictInt | None = Field(
        default=None,
        description="Azure scheduling tier: a name (`Standard`, `GlobalStandard`, `Developer`) or its number "
        "(0, 1, 2; litellm sends 1); accepted and ignored (one local tier).",
    )
    prompt_loss_weight: Weight | None = Field(
        default=None, description="Azure/litellm send it at the top level; see `IGNORED_HYPERPARAMETERS`."
    )

    @field_validator("trainingType")
    @classmethod
    def _training_type_name(cls, value: str | int | None) -> str | None:
        """Integers are Azure's enum numbers; they are read as the names (unknown numbers are refused)."""
        if value is None or isinstance(value, str):
            return value
        if value not in TRAINING_TYPES:
            known = ", ".join(f"{number} ({name})" for number, name in TRAINING_TYPES.items())
            raise ValueError(f"unknown trainingType {value}; use a name or one of {known}")
        return TRAINING_TYPES[value]

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"metadata can have at most {MAX_METADATA_PAIRS} key-value pairs")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY:
                raise ValueError(f"metadata keys can be at most {MAX_METADATA_KEY} characters ({key[:20]!r}…)")
            if len(item) > MAX_METADATA_VALUE:
                raise ValueError(f"metadata values can be at most {MAX_METADATA_VALUE} characters (key {key!r})")
        return value


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobHyperparameters(BaseModel):
    batch_size: Auto | int | None = "auto"
    learning_rate_multiplier: Auto | float | None = "auto"
    n_epochs: Auto | int | None = "auto"


class FineTuningJob(BaseModel):
    """The `fine_tuning.job` object: every field of OpenAI's, plus openft's documented extensions.

    `status` adds `pausing` and `paused` to OpenAI's list (docs/api-compatibility.md §3). The extensions
    (§4: `queue_position`, `estimated_start`, `completed_steps`, `total_steps`) are extra properties, which
    OpenAI's schema and the SDKs allow, so a standard client reads the object unchanged.
    """

    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    id: str
    created_at: int
    error: JobError | None = Field(description="Why the job failed; null unless it failed.")
    fine_tuned_model: str | None = Field(description="The model's name; null until the job succeeded.")
    finished_at: int | None = Field(description="When the job ended (succeeded, failed, cancelled); else null.")
    hyperparameters: JobHyperparameters = Field(description="Numbers once resolved from the data; `auto` before.")
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None = Field(description="Tokens processed by training; null while it runs.")
    training_file: str
    validation_file: str | None
    integrations: list[dict[str, Any]] | None = None
    estimated_finish: int | None = Field(
        default=None,
        description="Unix seconds. Running: from the recent step times. Queued (openft): after the jobs ahead "
        "of it, see `estimated_start`. Otherwise null.",
    )
    method: dict[str, Any]
    metadata: dict[str, str] | None = None
    user_provided_suffix: str | None = None
    queue_position: int | None = Field(
        default=None, description="openft extension: 1-based place in the queue (1 starts next); null unless queued."
    )
    estimated_start: int | None = Field(
        default=None, description="openft extension: unix seconds when a queued job should start; else null."
    )
    completed_steps: int | None = Field(
        default=None,
        description="openft extension: training steps done (0 until the first; the step of the checkpoint it "
        "resumes from after a pause or recovery); null until the files are validated.",
    )
    total_steps: int | None = Field(
        default=None,
        description="openft extension: training steps planned (epochs × steps per epoch, known once the files "
        "are validated); null before that and for a job that failed validation.",
    )


class FineTuningJobEvent(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict[str, Any] = Field(default_factory=dict, description="Metrics for `metrics` events; else empty.")


class FineTuningJobCheckpoint(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, int | float] = Field(
        description="Only the metrics computed at this step; `step` is an integer, the others numbers."
    )
