"""The contract between the job worker and the training process.

The worker writes a `TrainJobSpec` as `job.json` in the job's folder and runs `openft train job.json`;
a person can run the very same command by hand. The trainer reports progress as one JSON object
per line on its standard output (`ProgressMessage` kinds below) and ends with an exit code from
`ExitCode`. Nothing else passes between the two processes, so this module is the whole interface:
it imports neither torch nor the database.

Layout the trainer writes under `output_dir` (all of it through temp + fsync + rename):

    checkpoints/step_000012/          one committed checkpoint (the name's number is the optimizer step)
        adapter/ or model/            servable weights (PEFT adapter folder, or a full HF model folder)
        state/                        optimizer, scheduler, RNG states, data position, thread count
        meta.json                     step, epoch, kind, metrics, hashes of every file (written last)
    model/                            the final weights (same shape as a checkpoint's adapter/ or model/)
    metrics.jsonl                     one line per optimizer step (rewritten on resume: each step once)
    results.csv                       the result file, written when training completes
    train.lock                        held (POSIX lock) by the one trainer working in the folder

The worker reads the folder too, but only through the helpers below (`committed_checkpoint_steps`,
`read_metrics`): recovery after a crash needs the checkpoints and steps on disk, which may be ahead of
what the dead worker managed to record in the database.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION = 1
TrainingMethod = Literal["supervised", "dpo", "reinforcement"]
"""What a job learns: supervised fine-tuning on chat data, DPO on preference pairs, or reinforcement fine-tuning
(GRPO) on prompts a grader scores (`openft.datasets.formats`)."""
RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
)
"""The result file's columns (docs/api-compatibility.md §7); also the metric names of metrics and checkpoint
messages."""
DPO_RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_reward_margin",
    "train_preference_accuracy",
    "train_chosen_reward",
    "train_rejected_reward",
    "valid_loss",
    "valid_reward_margin",
    "valid_preference_accuracy",
    "full_valid_loss",
    "full_valid_reward_margin",
    "full_valid_preference_accuracy",
)
"""The result file's columns of a DPO job (rewards are β·(log π − log π_ref) of the preferred/rejected answer)."""
RFT_RESULT_COLUMNS = (
    "step",
    "train_loss",
    "train_reward_mean",
    "train_kl",
    "train_completion_tokens",
    "train_grader_error_rate",
    "valid_reward_mean",
    "valid_grader_error_rate",
    "full_valid_reward_mean",
)
"""The result file's columns of a reinforcement job: per prompt, the mean grader reward of its sampled answers,
the KL to the reference policy per answer token, the answers' mean length and the share of answers the grader
could not score (each scored 0); averaged over the step's prompts."""
PARENT_PID_ENV = "OPENFT_TRAIN_PARENT_PID"
"""Set by the worker: the trainer stops (with a checkpoint) at the next step once this process is gone."""
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_STATE_DIR = "state"
"""A checkpoint's resume state (optimizer, scheduler, RNG, data position); its weights sit next to it."""
METRICS_FILE = "metrics.jsonl"
DEFAULT_MAX_SEQ_LEN = 2048
"""Tokens per example when the job sets no `max_seq_len`: the model's context, but never more than this.
The data check (`openft.datacheck`) counts "over the context" against the same cap, so it lives here."""
LOCK_FILE = "train.lock"
"""A trainer holds an exclusive POSIX lock on this file in its output folder for as long as it runs, so a
trainer left behind by a dead worker and the one a new worker starts never write the folder together."""
_CHECKPOINT_NAME = re.compile(r"^step_(\d{6,})$")
"""`step_000012`: the optimizer step, zero-padded to six digits so names sort as steps do (more digits past 999,999)."""


class ExitCode(enum.IntEnum):
    """How `openft train` ends; the worker maps these to job statuses."""

    COMPLETED = 0  # every planned step ran and the final model and results.csv exist
    FAILED = 1  # a `failed` progress message says why (bad data, bad model, out of memory, ...)
    USAGE = 2  # the job file could not be read
    STOPPED = 3  # asked to stop (SIGUSR1/SIGTERM/SIGINT): a checkpoint was committed, resume continues


class BaseModelSpec(BaseModel):
    """Where the base weights come from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The name users gave in `model` (folder name, built-in name or hub id).")
    source: Literal["local", "builtin", "hub", "finetune"]
    path: str | None = Field(default=None, description="HF folder for `local`; the fine-tuned weights for `finetune`.")
    hub_id: str | None = None


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class DpoSpec(BaseModel):
    """Direct preference optimization settings (method `dpo`)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(default=0.1, gt=0, le=2, description="Strength of the pull towards the reference model.")


RFT_DEFAULT_MAX_COMPLETION_TOKENS = 64
"""A reinforcement job's longest sampled answer when the job does not say (openft's `max_completion_tokens`)."""


class ReinforcementSpec(BaseModel):
    """Reinforcement fine-tuning settings (method `reinforcement`): GRPO with the job's grader."""

    model_config = ConfigDict(extra="forbid")

    grader: dict[str, Any] = Field(description="The job's grader, as OpenAI defines graders (openft.graders).")
    group_size: int = Field(default=4, ge=2, le=64, description="Answers sampled per prompt (compute_multiplier × 4).")
    max_completion_tokens: int = Field(
        default=RFT_DEFAULT_MAX_COMPLETION_TOKENS, ge=1, le=4096, description="Longest sampled answer, in tokens."
    )
    temperature: float = Field(default=1.0, gt=0, le=2, description="Sampling temperature of the answers.")
    beta: float = Field(default=0.04, ge=0, description="Weight of the KL penalty to the reference policy.")
    clip_epsilon: float = Field(default=0.2, gt=0, lt=1, description="PPO clip range of the policy ratio.")
    judges: dict[str, BaseModelSpec] = Field(
        default_factory=dict,
        description="The judge model of each score_model/label_model grader, by the name the grader gives it: "
        "the trainer loads and runs them itself (training/judges.py).",
    )
    embedding_model: str | None = Field(
        default=None, description="The server's embeddings model folder, for text_similarity's `cosine`."
    )


class WandbSpec(BaseModel):
    """`integrations: [{type: wandb, wandb: {...}}]` of the job; the run id lives in the output folder."""

    model_config = ConfigDict(extra="forbid")

    project: str
    name: str | None = None
    entity: str | None = None
    tags: list[str] | None = None


class ResolvedHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


class TrainJobSpec(BaseModel):
    """Everything one training run needs; `job.json` holds exactly this."""

    model_config = ConfigDict(extra="forbid")

    spec_version: int = SPEC_VERSION
    job_id: str
    base_model: BaseModelSpec
    cache_dir: str = Field(description="Where built-in models are converted once and reused.")
    training_file: str = Field(description="Path of the chat JSONL (a private copy the job owns).")
    validation_file: str | None = None
    output_dir: str
    method: TrainingMethod = "supervised"
    dpo: DpoSpec | None = Field(default=None, description="Required when method is dpo.")
    reinforcement: ReinforcementSpec | None = Field(default=None, description="Required when method is reinforcement.")
    hyperparameters: ResolvedHyperparameters
    seed: int
    lora: LoraSpec | None = Field(default_factory=LoraSpec, description="None means full fine-tuning.")
    base_learning_rate: float = Field(description="Learning rate = base_learning_rate × multiplier.")
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_seq_len: int | None = Field(
        default=None, description=f"None: the model's context, capped at {DEFAULT_MAX_SEQ_LEN}."
    )
    micro_batch_size: int = Field(default=8, ge=1, description="Examples per forward pass; batches accumulate.")
    num_threads: int | None = Field(default=None, description="torch threads; a resume uses the checkpoint's.")
    keep_checkpoints: int = Field(default=3, ge=1, description="Checkpoints kept on disk (newest), every kind.")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, description="Also checkpoint every N steps (kind `periodic`); None: no step interval."
    )
    checkpoint_every_minutes: float | None = Field(
        default=None, gt=0, description="Also checkpoint when this long has passed since the last checkpoint."
    )
    metrics_every: int = Field(default=1, ge=1, description="Emit a metrics message every N steps.")
    packing: bool = Field(default=True, description="Pack short examples of a micro-batch into shared rows.")
    precision: Literal["auto", "fp32", "bf16"] = Field(default="auto", description="auto: decided per device.")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        default="auto", description="Recompute activations in the backward pass; auto: when they would not fit."
    )
    quantization: Literal["nf4"] | None = Field(
        default=None, description="nf4: the frozen base is loaded 4-bit NF4 with double quantization (QLoRA)."
    )
    compile: bool = Field(default=False, description="torch.compile the model's decoder layers.")
    workers: int = Field(default=1, ge=1, description="Trainer processes (ranks on one machine; training/launcher.py).")
    gpus_per_worker: int | None = Field(
        default=None, ge=0, description="GPUs each rank uses; 0: the CPU (gloo); None: 1 where there is a GPU, else 0."
    )
    eval_every: int | None = Field(default=None, ge=1, description="Sampled valid_loss every N steps; None: auto.")
    eval_samples: int = Field(default=64, ge=1, description="Validation examples in the sampled valid_loss.")
    wandb: WandbSpec | None = None
    max_model_bytes: int | None = Field(
        default=None, ge=1, description="A hub base model whose files weigh more is not downloaded; None: no cap."
    )

    @classmethod
    def read(cls, path: str | Path) -> TrainJobSpec:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))


# Progress messages (trainer → worker), one JSON object per stdout line --------------------------

ProgressType = Literal[
    "started", "log", "metrics", "checkpoint", "checkpoint_removed", "stopped", "completed", "failed"
]
"""
- started:   {total_steps, start_step, steps_per_epoch, n_examples, trainable_params, num_threads,
              resumed_from: path|null, checkpoints: [{step, epoch, kind, path, metrics}] (every checkpoint
              on disk, so the worker can make its records match after a crash)}
- log:       {level: info|warn|error, message}                       → a job event
- metrics:   {step, total_steps, epoch, train_loss, train_mean_token_accuracy, learning_rate,
              trained_tokens (cumulative), step_seconds; with a validation file also valid_loss,
              valid_mean_token_accuracy every eval_every steps and full_valid_* at epoch ends}
              (DPO: the metric names of DPO_RESULT_COLUMNS instead of the *_mean_token_accuracy ones)
- checkpoint:{step, epoch, path, kind: epoch|pause|periodic, metrics: {step, train_loss, ...}}
              (periodic: a resume point written every checkpoint_every_steps / _minutes; not listed by the API)
- checkpoint_removed: {step, path}                                   (pruned; keep the newest N)
- stopped:   {step, checkpoint: path|null}                           then exit STOPPED
              (the disk filled up: also reason: DISK_FULL_REASON and a message for the job's owner; the
              step and checkpoint are the last good ones, and the worker pauses the job instead of queueing it)
- completed: {step, total_steps, trained_tokens, model_path, results_path} then exit COMPLETED
- failed:    {code, message, param|null}                             then exit FAILED
"""


DISK_FULL_REASON = "disk_full"
"""`reason` of a `stopped` message sent because the disk (or quota) filled up while the trainer wrote."""


def progress_line(kind: ProgressType, /, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"), allow_nan=False) + "\n"


def parse_progress_line(line: str) -> dict[str, Any] | None:
    """The message on a stdout line, or None for anything that is not one (stray library output)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and isinstance(message.get("type"), str) else None


# The output folder as the worker sees it ------------------------------------------------------------


def checkpoint_dir_name(step: int) -> str:
    """The folder name (under `CHECKPOINTS_DIR`) of the checkpoint of `step`: `step_000012`."""
    return f"step_{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """The step of a checkpoint folder name, or None when `name` is not one (a temp or `damaged` folder)."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of `step` lives in a job's output folder."""
    return Path(output_dir) / CHECKPOINTS_DIR / checkpoint_dir_name(step)


def committed_checkpoint_steps(output_dir: str | Path) -> list[int]:
    """Steps of the committed checkpoint folders, oldest first (not verified: the trainer does that)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    steps = []
    for entry in root.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir():
            steps.append(step)
    return sorted(steps)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of a metrics file (a torn last line from a kill is ignored), by step."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.setdefault(row["step"], row)
    return [rows[step] for step in sorted(rows)]


def emits_metrics(step: int, *, total_steps: int, steps_per_epoch: int, metrics_every: int) -> bool:
    """Whether the trainer sends a `metrics` message for `step` (and so the job gets a metrics event)."""
    return step % metrics_every == 0 or step == total_steps or step % steps_per_epoch == 0


# A rank's environment --------------------------------------------------------------------------------
# Whoever starts a job's ranks (the launcher, training/launcher.py, or the Ray executor, jobs/executors/) tells
# each rank who it is through these variables (docs/design.md §3.7).

RENDEZVOUS_ENV = "OPENFT_RENDEZVOUS"
"""The FileStore the ranks meet through; set only in a rank's environment (it is how a rank knows it is one)."""
GPUS_ENV = "OPENFT_GPUS_PER_WORKER"
LOCKS_FOLDER_ENV = "OPENFT_RANK_LOCKS_FOLDER"
"""Set ("1") where no launcher holds `train.lock` for the ranks (the Ray executor): rank 0 takes it itself."""
HOST_ENV = "OPENFT_RANK_HOST"
"""The address gloo binds (default 127.0.0.1): a Ray node's own address when the ranks span machines."""
GPU_SLOT_ENV = "OPENFT_RANK_GPU_SLOT"
"""Which of the visible GPUs' slots is this rank's: its rank under the launcher (all ranks see every GPU of the
machine), 0 under Ray (each worker sees only the GPUs Ray gave it)."""
THREADS_ENV = "OPENFT_RANK_THREADS"
"""torch threads of each rank: the job's threads (or this machine's CPUs) divided among the ranks."""


@dataclass(frozen=True)
class RankEnv:
    """Who this process is when the launcher started it: torchrun's variables and openft's own."""

    rank: int
    world_size: int
    rendezvous: Path
    gpus_per_worker: int | None
    """None: 1 where this machine has a GPU, else 0 (each rank looks: the launcher does not import torch)."""
    threads: int
    locks_folder: bool = False
    """Whether rank 0 takes `train.lock` (no launcher holds it: the Ray executor)."""
    host: str = "127.0.0.1"
    gpu_slot: int | None = None
    """The first visible GPU of this rank is `gpu_slot × gpus_per_worker`; None: the rank's number."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def gpu_slots(self) -> int:
        """How many ranks share this process's visible GPUs: all of them under the launcher, one under Ray."""
        return self.world_size if self.gpu_slot is None else 1

    @property
    def first_gpu_slot(self) -> int:
        return self.rank if self.gpu_slot is None else self.gpu_slot

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> RankEnv | None:
        """This process's rank, or None when it is not a rank (the launcher, or a one-process trainer)."""
        env = os.environ if environ is None else environ
        if RENDEZVOUS_ENV not in env:
            return None
        return cls(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            rendezvous=Path(env[RENDEZVOUS_ENV]),
            gpus_per_worker=int(env[GPUS_ENV]) if env.get(GPUS_ENV, "").isdigit() else None,
            threads=int(env.get(THREADS_ENV, "1")),
            locks_folder=env.get(LOCKS_FOLDER_ENV) == "1",
            host=env.get(HOST_ENV) or "127.0.0.1",
            gpu_slot=int(env[GPU_SLOT_ENV]) if env.get(GPU_SLOT_ENV, "").isdigit() else None,
        )

    def variables(self) -> dict[str, str]:
        values = {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.world_size),
            RENDEZVOUS_ENV: str(self.rendezvous),
            GPUS_ENV: "auto" if self.gpus_per_worker is None else str(self.gpus_per_worker),
            THREADS_ENV: str(self.threads),
            "OMP_NUM_THREADS": str(self.threads),
            "PYTHONUNBUFFERED": "1",
            HOST_ENV: self.host,
        }
        if self.locks_folder:
            values[LOCKS_FOLDER_ENV] = "1"
        if self.gpu_slot is not None:
            values[GPU_SLOT_ENV] = str(self.gpu_slot)
        if self.gpus_per_worker == 0:
            values["CUDA_VISIBLE_DEVICES"] = ""  # a CPU rank never touches a GPU (gloo), even on a GPU machine
        return values
