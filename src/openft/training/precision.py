"""Numeric precision of the forward pass: fp32, or bf16 autocast over fp32 master weights.

Either way the trained weights, their gradients and the optimizer state stay fp32 (LoRA's frozen base is
stored in bf16 under "bf16": `model.frozen_dtype`); "bf16" runs the matrix products of the forward (and
so of the backward) in bfloat16 under `torch.autocast`, and the loss's softmax in fp32. `precision: auto`
decides per device:

- CUDA: bf16 where the GPU supports it (Ampere and newer), else fp32.
- CPU: bf16 where the CPU has bf16 instructions (AVX512-BF16 or AMX), else fp32 (emulated bf16 is slow).

Why bf16 on such CPUs, measured on 2 cores of an AMD EPYC with AVX512-BF16 (no AMX), SmolLM2-135M-Instruct,
LoRA r=16 on all linear layers, batches of 8 chat examples of ~66 tokens (`benchmarks/train_vs_hf.py`):

    openft fp32  226 tokens/s      transformers.Trainer fp32  189 tokens/s
    openft bf16  383 tokens/s      transformers.Trainer bf16  272 tokens/s

- Speed: 1.7× over fp32 (2.0× over what a Trainer user gets by default on a CPU, fp32).
- Exact resume is unaffected: weights, gradients and AdamW state stay fp32 and autocast is deterministic
  on a CPU, so stopped, killed and resumed bf16 runs end bit-identical to straight ones
  (tests/training/test_resume.py runs `auto` and explicit bf16 chains).
- The cost: at the same step the loss is a few percent higher. Same job in both precisions (zorblax demo,
  4 epochs = 20 steps, lr 2e-4), sampled valid_loss at steps 5/10/15/20: fp32 1.91/1.53/1.31/1.24,
  bf16 2.05/1.61/1.38/1.30; before training the two agree (2.716 vs 2.709). The Trainer in bf16 shows
  the same curve. For a fixed wall time bf16 is well ahead (its step 10 beats fp32's step 5, at about the
  same time). A job that wants fp32's curve sets `precision: fp32`.

A checkpoint records the precision it was trained with and a resume keeps it (like the thread count),
so a job that started in bf16 on one machine does not switch to fp32 half way on another.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 is emulated and slow."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(requested: Literal["auto", "fp32", "bf16"], device: torch.device) -> Precision:
    """What `requested` means on `device` (see the module docstring for what `auto` picks and why)."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: Precision) -> AbstractContextManager[object]:
    """The context the forward pass runs in: bf16 autocast, or nothing at all for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
