"""How much memory a micro-batch's activations take, and how much the device has: what
`gradient_checkpointing: "auto"` decides on.

Activations kept for the backward pass grow with tokens × hidden size × layers; the weights do not depend on
the batch. The estimate follows Korthikanti et al. (2022, "Reducing Activation Recomputation in Large
Transformer Models"): about 34·h bytes per token and layer in 16-bit arithmetic for the tensors a transformer
layer saves (attention scores excluded: SDPA does not keep them), doubled for fp32, plus the MLP's wider
intermediate where the config says how wide it is. With checkpointing only each layer's input is kept (h
values per token and layer) and one layer's activations are recomputed at a time.

An estimate, on purpose on the safe side: checkpointing costs about a third more compute, running out of
memory mid-run costs the job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

SAFETY_FRACTION = 0.5
"""Activations may take at most this share of the memory free before training (weights, optimizer state,
the allocator's slack and everything else live in the rest)."""


@dataclass(frozen=True)
class ActivationEstimate:
    tokens: int
    """Tokens in the largest micro-batch (rows × width)."""
    kept_bytes: int
    """Activations kept for the backward pass without checkpointing."""
    checkpointed_bytes: int
    """With checkpointing: each layer's input, plus one layer recomputed at a time."""


def estimate_activations(config: Any, tokens: int, *, bytes_per_value: int) -> ActivationEstimate:
    """Activation memory of a decoder-only transformer for `tokens` tokens in one forward pass."""
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    intermediate = int(getattr(config, "intermediate_size", 0) or 4 * hidden)
    # per token and layer, in values: 17·h for attention and norms (34 bytes at 2 bytes a value), and the MLP's
    # gate/up/activation outputs (3 × intermediate) where the MLP is gated (Llama, Qwen, Mistral)
    per_token_layer = 17 * hidden + 3 * intermediate
    kept = tokens * layers * per_token_layer * bytes_per_value
    checkpointed = tokens * layers * hidden * bytes_per_value + tokens * per_token_layer * bytes_per_value
    return ActivationEstimate(tokens, kept, checkpointed)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` now (CUDA: the driver's count; CPU: MemAvailable); None when unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError):
        return None


def needs_checkpointing(estimate: ActivationEstimate, free_bytes: int | None) -> bool:
    """Whether "auto" turns gradient checkpointing on: the kept activations would take more than
    `SAFETY_FRACTION` of the free memory. Unknown free memory: off (the default of every trainer)."""
    return free_bytes is not None and estimate.kept_bytes > SAFETY_FRACTION * free_bytes
