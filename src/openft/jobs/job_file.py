"""From a job row to the trainer's `job.json`: where every request option ends up.

Kept apart from the worker loop because it is pure translation: the requested `method` (with openft's
documented extensions), the resolved hyperparameters, the base model (or the weights a continued job
starts from, copied into the job folder), integrations and the server's settings.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openft.basemodels import BaseModelInfo
from openft.basemodels.catalog import GB
from openft.datasets import auto
from openft.db.tables import JobRow
from openft.settings import Settings
from openft.trainer_contract import (
    RFT_DEFAULT_MAX_COMPLETION_TOKENS,
    BaseModelSpec,
    DpoSpec,
    LoraSpec,
    ReinforcementSpec,
    ResolvedHyperparameters,
    TrainJobSpec,
    WandbSpec,
)

PARENT_DIR = "parent"
"""Sub-folder of a continued job holding its own copy of the weights it starts from."""
JUDGES_DIR = "judges"
"""Sub-folder of a reinforcement job holding its own copy of each fine-tuned judge model's weights."""


def judge_folders(job: JobRow, job_dir: Path) -> dict[str, Path]:
    """Where the job keeps its copy of each fine-tuned judge (`judges/0`, `judges/1`, … by sorted name)."""
    found = sorted((job.judge_models or {}).items())
    return {name: job_dir / JUDGES_DIR / str(i) for i, (name, judge) in enumerate(found) if judge["weights"]}


def base_model_spec(info: BaseModelInfo) -> BaseModelSpec:
    return BaseModelSpec(
        name=info.name, source=info.source, path=str(info.path) if info.path is not None else None, hub_id=info.hub_id
    )


def train_threads(settings: Settings) -> int | None:
    """torch threads for a trainer: `OPENFT_TRAIN_THREADS` when set; else, on a worker that runs several jobs at
    once, its CPUs shared between them (two trainers with a thread per core each oversubscribe the cores, and
    torch's spinning threads then make both several times slower); else None: torch's default."""
    if settings.train_threads is not None or settings.max_jobs == 1:
        return settings.train_threads
    return max(1, usable_cpus() // settings.max_jobs)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity on Linux; the machine's count where there is no such call,
    e.g. macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def visible_gpus() -> int:
    """CUDA devices this machine offers its trainers (0 without torch's CUDA build or without a GPU).

    torch is imported here only when asked: the API process needs it just for a job that says `compute`."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


DEFAULT_BETA = 0.1
"""DPO's `beta` when "auto": the value of the original paper and of TRL's default."""
RFT_DEFAULT_EVAL_INTERVAL = 10
RFT_DEFAULT_EVAL_SAMPLES = 16
METRICS_EVENTS_BUDGET = 2000
"""At most about this many metrics events per job (every step below it; the result file has all steps)."""


def requested(job: JobRow) -> dict[str, Any]:
    return dict(job.method[job.method["type"]]["hyperparameters"])


def resolve_hyperparameters(job: JobRow, n_examples: int) -> dict[str, Any]:
    """Numbers for every "auto" (datasets/auto.py), plus DPO's beta."""
    options = requested(job)
    resolved = auto.resolve(
        n_examples,
        n_epochs=options.get("n_epochs", "auto"),
        batch_size=options.get("batch_size", "auto"),
        learning_rate_multiplier=options.get("learning_rate_multiplier", "auto"),
    )
    values: dict[str, Any] = {
        "batch_size": resolved.batch_size,
        "learning_rate_multiplier": resolved.learning_rate_multiplier,
        "n_epochs": resolved.n_epochs,
    }
    if job.method["type"] == "dpo":
        beta = options.get("beta", "auto")
        values["beta"] = DEFAULT_BETA if beta == "auto" else float(beta)
    if job.method["type"] == "reinforcement":
        values.update(_resolve_reinforcement(options))
    return values


def _resolve_reinforcement(options: dict[str, Any]) -> dict[str, Any]:
    """RFT's "auto"s: compute_multiplier 1 (4 answers per prompt), a validation every
    `RFT_DEFAULT_EVAL_INTERVAL` steps on `RFT_DEFAULT_EVAL_SAMPLES` prompts (sampling is the costly part)."""
    multiplier = options.get("compute_multiplier", "auto")
    multiplier = 1.0 if multiplier == "auto" else float(multiplier)
    interval, samples = options.get("eval_interval", "auto"), options.get("eval_samples", "auto")
    return {
        "compute_multiplier": multiplier,
        "eval_interval": RFT_DEFAULT_EVAL_INTERVAL if interval == "auto" else int(interval),
        "eval_samples": RFT_DEFAULT_EVAL_SAMPLES if samples == "auto" else int(samples),
    }


def group_size(compute_multiplier: float) -> int:
    """Answers sampled per prompt: 4 × compute_multiplier, at least 2 (GRPO compares answers within a group)."""
    return max(2, round(4 * compute_multiplier))


def _lora(options: dict[str, Any]) -> LoraSpec | None:
    if options.get("fine_tuning_mode") == "full":
        return None  # qlora is LoRA on a quantized base (`quantization`)
    defaults = LoraSpec()
    return LoraSpec(
        r=options.get("lora_rank", defaults.r),
        alpha=options.get("lora_alpha", defaults.alpha),
        dropout=options.get("lora_dropout", defaults.dropout),
        target_modules=options.get("lora_target_modules", defaults.target_modules),
    )


def _reinforcement_spec(
    job: JobRow,
    resolved: dict[str, Any],
    options: dict[str, Any],
    judges: dict[str, BaseModelSpec],
    embedding_model: Path | None,
) -> ReinforcementSpec | None:
    if job.method["type"] != "reinforcement":
        return None
    return ReinforcementSpec(
        grader=job.method["reinforcement"]["grader"],
        group_size=group_size(resolved["compute_multiplier"]),
        max_completion_tokens=options.get("max_completion_tokens", RFT_DEFAULT_MAX_COMPLETION_TOKENS),
        judges=judges,
        embedding_model=str(embedding_model) if embedding_model is not None else None,
    )


def build_spec(
    job: JobRow,
    base: BaseModelInfo | None,
    settings: Settings,
    job_dir: Path,
    judges: dict[str, BaseModelSpec] | None = None,
) -> TrainJobSpec:
    """The job file for `job`; `base` is the catalog entry of its base model (None when continuing), `judges`
    where each judge model of a reinforcement job's grader comes from (`judge_specs`)."""
    options = requested(job)
    resolved = dict(job.resolved_hyperparameters or {})
    if job.parent_weights:
        base_model = BaseModelSpec(name=job.model, source="finetune", path=str(job_dir / PARENT_DIR))
    else:
        assert base is not None
        base_model = base_model_spec(base)
    lora = _lora(options)
    compute = options.get("compute") or {}
    wandb = next((i["wandb"] for i in job.integrations or [] if i.get("type") == "wandb"), None)
    return TrainJobSpec(
        job_id=job.id,
        base_model=base_model,
        cache_dir=str(settings.cache_dir),
        training_file=str(job_dir / "training.jsonl"),
        validation_file=str(job_dir / "validation.jsonl") if job.validation_file else None,
        output_dir=str(job_dir),
        method=job.method["type"],
        dpo=DpoSpec(beta=resolved["beta"]) if job.method["type"] == "dpo" else None,
        reinforcement=_reinforcement_spec(job, resolved, options, judges or {}, settings.embedding_model),
        hyperparameters=ResolvedHyperparameters(
            n_epochs=resolved["n_epochs"],
            batch_size=resolved["batch_size"],
            learning_rate_multiplier=resolved["learning_rate_multiplier"],
        ),
        seed=job.seed,
        lora=lora,
        base_learning_rate=auto.BASE_LR_LORA if lora is not None else auto.BASE_LR_FULL,
        max_seq_len=options.get("max_seq_length"),
        packing=options.get("packing", True),
        precision=options.get("precision") or "auto",
        gradient_checkpointing=options.get("gradient_checkpointing", "auto"),
        quantization="nf4" if options.get("fine_tuning_mode") == "qlora" else None,
        compile=bool(options.get("compile", False)),
        workers=compute.get("workers", 1),
        gpus_per_worker=compute.get("gpus_per_worker"),
        num_threads=train_threads(settings),
        keep_checkpoints=settings.keep_checkpoints,
        checkpoint_every_steps=settings.checkpoint_every_steps or None,
        checkpoint_every_minutes=settings.checkpoint_every_minutes or None,
        metrics_every=max(1, (job.total_steps or 0) // METRICS_EVENTS_BUDGET),
        wandb=WandbSpec(**{k: v for k, v in wandb.items() if v is not None}) if wandb else None,
        max_model_bytes=int(settings.max_model_gb * GB),
        **_evaluation(resolved),
    )


def judge_specs(
    job: JobRow, job_dir: Path, catalog_get: Callable[[str], BaseModelInfo | None]
) -> dict[str, BaseModelSpec]:
    """Where the trainer loads each judge model from: the job's copy of a fine-tuned one (`judge_folders`), or
    its base model's catalog entry. Raises LookupError naming a judge whose base model is gone."""
    copies = judge_folders(job, job_dir)
    specs = {}
    for name, judge in sorted((job.judge_models or {}).items()):
        if name in copies:
            specs[name] = BaseModelSpec(name=name, source="finetune", path=str(copies[name]))
            continue
        info = catalog_get(judge["base"])
        if info is None:
            raise LookupError(f"The judge model {name!r} needs the base model {judge['base']!r}, no longer available.")
        specs[name] = base_model_spec(info)
    return specs


def _evaluation(resolved: dict[str, Any]) -> dict[str, Any]:
    """RFT's `eval_interval` and `eval_samples` (resolved); supervised and DPO jobs keep the trainer's defaults."""
    if "eval_interval" not in resolved:
        return {}
    return {"eval_every": resolved["eval_interval"], "eval_samples": resolved["eval_samples"]}
