"""How long training would take here: a short measured run, or a documented throughput table.

- `measure_throughput` (the CLI's default): loads the model as the trainer does (fp32 weights, LoRA r16 on
  all linear layers, the trainer's device and "auto" precision, its forward fast paths), runs one warm-up
  and then up to `MEASURED_STEPS` optimizer steps (forward + backward + AdamW) on the file's own first
  examples in micro-batches of the job's size, and divides the tokens by the time. Extrapolating assumes
  the rest of the file looks like its beginning; evaluations and checkpoints are not counted.
- `table_throughput` (the server's `GET /v1/files/{id}/check`, which must not train): tokens/s measured
  for SmolLM2-135M LoRA (README "Benchmarks": 59 tok/s per core in fp32 without AVX-512, 191 per core in
  bf16 on CPUs with native bf16, 11,800 on an H100 in bf16), scaled by the model's parameter count
  (from config.json) relative to SmolLM2-135M's, at most `MAX_TABLE_SCALE`× faster (tiny models are
  bound by overheads, not arithmetic). It is a rough guide: other CPUs and GPUs differ.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the trainer's modules import torch: only when a check measures
    from openft.training.precision import Precision

MEASURED_STEPS = 3
MEASURE_BUDGET_SECONDS = 30.0
"""The measured run stops after this much time past the warm-up, however few steps it made."""
MICRO_BATCH_SIZE = 8
"""The trainer's default micro-batch (`TrainJobSpec.micro_batch_size`): a larger batch accumulates."""

CPU_TOKENS_PER_SECOND_PER_CORE = {"fp32": 59.0, "bf16": 191.0}
CUDA_TOKENS_PER_SECOND = 11_800.0
MAX_TABLE_SCALE = 10.0
REFERENCE_CONFIG = {"hidden_size": 576, "num_hidden_layers": 30, "intermediate_size": 1536, "vocab_size": 49152}
"""SmolLM2-135M-Instruct's shape: the model the table was measured on."""


@dataclass(frozen=True)
class Estimate:
    tokens_per_second: float
    source: Literal["measured", "table"]
    device: str
    seconds: float | None = None
    detail: str = ""

    def over(self, tokens: int) -> Estimate:
        """This throughput applied to `tokens` training tokens."""
        return replace(self, seconds=round(tokens / self.tokens_per_second, 1) if self.tokens_per_second else None)

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "tokens_per_second": round(self.tokens_per_second, 1),
            "source": self.source,
            "device": self.device,
            "detail": self.detail,
        }


def approximate_parameters(config: dict[str, Any]) -> int | None:
    """Parameters of a decoder-only transformer from its config: layers × (attention + MLP) + embeddings."""
    try:
        hidden, layers = int(config["hidden_size"]), int(config["num_hidden_layers"])
        vocab = int(config.get("vocab_size") or 32000)
        intermediate = int(config.get("intermediate_size") or 4 * hidden)
    except (KeyError, TypeError, ValueError):
        return None
    return layers * (4 * hidden * hidden + 3 * hidden * intermediate) + vocab * hidden


def _device_and_precision() -> tuple[Any, Precision]:

    from openft.training.model import pick_device
    from openft.training.precision import resolve_precision

    device = pick_device()
    return device, resolve_precision("auto", device)


def table_throughput(model_folder: Path | None) -> Callable[[list[Any], int], Estimate]:
    """tokens/s from the table for this machine's training device, scaled to the model's size."""

    def lookup(_examples: list[Any], _batch_size: int) -> Estimate:
        import torch

        device, precision = _device_and_precision()
        if device.type == "cuda":
            base, where = CUDA_TOKENS_PER_SECOND, f"cuda ({torch.cuda.get_device_name(device)}), bf16"
        else:
            cores = torch.get_num_threads()
            base = CPU_TOKENS_PER_SECOND_PER_CORE[precision] * cores
            where = f"cpu, {cores} threads, {precision}"
        reference = approximate_parameters(REFERENCE_CONFIG) or 1
        params = _parameters(model_folder)
        scale = min(MAX_TABLE_SCALE, reference / params) if params else 1.0
        detail = f"throughput table for SmolLM2-135M LoRA on {where}, scaled ×{scale:.2g} for the model's size"
        return Estimate(base * scale, "table", device.type, detail=detail)

    return lookup


def _parameters(model_folder: Path | None) -> int | None:
    if model_folder is None:
        return None
    try:
        config = json.loads((model_folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return approximate_parameters(config) if isinstance(config, dict) else None


def measure_throughput(
    model_folder: Path, *, steps: int = MEASURED_STEPS, budget_seconds: float = MEASURE_BUDGET_SECONDS
) -> Callable[[list[Any], int], Estimate]:
    """tokens/s of a few real optimizer steps of the model on this machine (see the module docstring)."""

    def measure(examples: list[Any], batch_size: int) -> Estimate:
        import torch

        from openft.training.data import micro_batches
        from openft.training.forward import ForwardPass, check_model
        from openft.training.model import load_tokenizer

        model, device, precision = _trainable_model(model_folder)
        pad_id = load_tokenizer(model_folder)[0].pad_token_id
        support = check_model(model, pad_id, device)
        forward = ForwardPass(pad_id, support.packing, support.split_head, device, precision)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
        dpo = any(len(seqs) > 1 for seqs in examples)
        batches = [examples[(i * batch_size) % len(examples) :][:batch_size] for i in range(steps + 1)]
        batches = [b if len(b) == batch_size else (b + examples)[:batch_size] for b in batches]

        def one_step(batch: list[Any]) -> int:
            tokens = 0
            for micro in micro_batches(batch, MICRO_BATCH_SIZE):
                sequences = [s for seqs in micro for s in seqs]
                tokens += sum(len(s.input_ids) for s in sequences)
                loss = -forward(model, sequences).logprobs.mean()
                if dpo:  # the reference policy's pass: the same model with its adapter off
                    with torch.no_grad(), model.disable_adapter():
                        forward(model, sequences)
                loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return tokens

        one_step(batches[0])  # warm-up: allocations, kernels, caches
        _sync(device)
        started, tokens, done = time.perf_counter(), 0, 0
        for batch in batches[1:]:
            tokens += one_step(batch)
            _sync(device)
            done += 1
            if time.perf_counter() - started > budget_seconds:
                break
        elapsed = max(time.perf_counter() - started, 1e-9)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        detail = f"{done} measured step(s) of batch {batch_size} on {device.type}{threads}, {precision}"
        return Estimate(tokens / elapsed, "measured", device.type, detail=detail)

    return measure


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _trainable_model(model_folder: Path) -> tuple[Any, Any, Precision]:
    """The base model with the trainer's default LoRA, on the trainer's device, in train mode."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from openft.trainer_contract import LoraSpec

    hf_logging.disable_progress_bar()  # a check prints its report, not "Loading weights" bars
    device, precision = _device_and_precision()
    torch.manual_seed(0)
    # Any: wrapped in a PEFT model below, which transformers' annotations do not allow for
    model: Any = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32, trust_remote_code=False)
    lora = LoraSpec()
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(model, config)
    model.to(device)
    model.train()
    return model, device, precision
