"""How much memory a job on this file would need, and which devices it fits: the report's `memory` object.

The trainer's own planner (`openft.training.memory_plan`) on the model's config.json, with the job's defaults
(LoRA r16 on all linear layers unless `fine_tuning_mode` says otherwise, the trainer's default micro-batch, the
file's "auto" batch size, sequences up to the check's `max_seq_length`): the micro-batch, checkpointing and peak
a job would get on this machine's training device, and whether it fits this machine's available RAM (`cpu`, in the
precision the CPU trains in; at most `OPENFT_TRAIN_MEMORY_GB`, as a trainer here would plan) and 24 GB and 80 GB GPUs
(bf16). Nothing is loaded but the config; torch only says which device trains here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openft.trainer_contract import LoraSpec, TrainingMethod, TrainJobSpec
from openft.training import memory_plan
from openft.training.memory_plan import GPU_SIZES, MODE_NAMES, Mode, ModelShape, Precision, TrainingSetup

CPU = "cpu"
DEFAULT_MICRO_BATCH: int = TrainJobSpec.model_fields["micro_batch_size"].default


@dataclass(frozen=True)
class MemoryReport:
    mode: Mode
    max_seq_len: int
    setup: TrainingSetup
    """As planned: for the file's longest example (`memory_plan.for_examples`)."""
    plan: memory_plan.MemoryPlan
    device: str
    fits_on: list[str]
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "fine_tuning_mode": self.mode,
            "max_seq_length": self.max_seq_len,
            "longest_sequence": self.setup.seq_len,
            "micro_batch_size": self.plan.micro_batch_size,
            "gradient_checkpointing": self.plan.gradient_checkpointing,
            "peak_bytes": self.plan.peak_bytes,
            "device": self.device,
            "available_bytes": self.plan.budget_bytes,
            "fits": self.plan.fits,
            "fits_on": self.fits_on,
            "detail": self.detail,
        }


def _setup(
    mode: Mode, method: TrainingMethod, batch_size: int, seq_len: int, precision: Precision, cuda: bool
) -> TrainingSetup:
    lora = LoraSpec()
    return TrainingSetup(
        mode=mode,
        precision=precision,
        seq_len=seq_len,
        batch_size=batch_size,
        max_micro_batch=DEFAULT_MICRO_BATCH,
        dpo=method == "dpo",
        lora_r=lora.r,
        lora_targets=lora.target_modules,
        lora_dropout=lora.dropout,
        cuda=cuda,
    )


def model_shape(model_folder: Path) -> ModelShape | None:
    try:
        config = json.loads((model_folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return ModelShape.from_config(config) if isinstance(config, dict) else None


def memory_report(
    model_folder: Path,
    *,
    method: TrainingMethod,
    batch_size: int,
    max_seq_len: int,
    longest_example: int,
    mode: Mode = "lora",
) -> MemoryReport | None:
    """The plan on this machine's training device and the devices a job fits, as the trainer decides them: whether
    the job fits at all with every example `max_seq_len` tokens long (before its model is loaded), then the
    micro-batch and checkpointing for the longest example's tokens (`longest_example`: both answers of a pair).
    None: the config has no shape the planner knows."""
    import torch

    from openft.training.memory import BadMemoryCap, free_memory, memory_budget
    from openft.training.model import pick_device
    from openft.training.precision import resolve_precision

    shape = model_shape(model_folder)
    if shape is None:
        return None

    def budget(device: torch.device) -> int | None:
        """What a trainer on `device` would plan against (at most the operator's cap, where it is valid)."""
        try:
            return memory_budget(device)
        except BadMemoryCap:
            return free_memory(device)

    device = pick_device()
    here = _setup(mode, method, batch_size, max_seq_len, resolve_precision("auto", device), device.type == "cuda")
    available = budget(device)
    plan = memory_plan.plan(shape, here, available)
    if plan.fits is not False:
        here = memory_plan.for_examples(here, longest_example)
        plan = memory_plan.plan(shape, here, available)

    cpu_device = torch.device("cpu")
    cpu = _setup(mode, method, batch_size, max_seq_len, resolve_precision("auto", cpu_device), False)
    ram = budget(cpu_device)
    fits_on = [CPU] if ram is not None and memory_plan.fits(shape, cpu, ram) else []
    gpu = _setup(mode, method, batch_size, max_seq_len, "bf16", True)
    fits_on += [name for name, size in GPU_SIZES.items() if memory_plan.fits(shape, gpu, size)]

    where = CPU if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})"
    detail = f"{where}, {here.precision}: {memory_plan.largest_parts(plan.estimate)}"
    if plan.fits is False:
        detail += "; " + memory_plan.failure_message(plan, here, where)
    elif plan.budget_bytes is not None:
        detail += f"; {memory_plan.gib(plan.budget_bytes)} available"
    return MemoryReport(mode, max_seq_len, here, plan, where, fits_on, detail)


def summary(memory: dict[str, Any]) -> str:
    """The CLI's line: `~5.1 GiB peak (LoRA, sequences of up to 77 tokens, micro-batch 8) — fits on: cpu, 24 GB`."""
    mode, tokens, micro = memory["fine_tuning_mode"], memory["longest_sequence"], memory["micro_batch_size"]
    how = f"{MODE_NAMES[mode]}, sequences of up to {tokens} tokens, micro-batch {micro}"
    if memory["gradient_checkpointing"]:
        how += ", gradient checkpointing"
    where = ", ".join(memory["fits_on"]) or f"none of {CPU}, {', '.join(GPU_SIZES)}"
    return f"~{memory_plan.gib(memory['peak_bytes'])} peak ({how}) — fits on: {where}"
