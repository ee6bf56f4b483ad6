"""`compile: true`: each decoder layer of the model is compiled with `torch.compile` (regional compilation).

Why the layers and not the whole model: the layers are where the time goes, they are all alike (one graph,
compiled once, serves every layer: the modules' weights are the graph's inputs), and nothing in them depends
on the data. Around them is what compiles badly or not at all: transformers builds the attention mask from the
position ids (data-dependent control flow), `forward.score_targets` picks target positions (a data-dependent
shape) and the chunked LM-head loss (`head_loss.py`) runs its own autograd function chunk by chunk. All of
that stays eager, and the layers compile whatever the model class around them.

Each layer is compiled in place (`nn.Module.compile`): the module, its parameter names and PEFT's LoRA layers
inside it stay as they are, so checkpoints, adapters and the optimizer see the same model. LoRA layers are in
the compiled region (they are injected before); so is gradient checkpointing: transformers checkpoints the
layer's `forward`, which the compiled call traces through, and recomputation in the backward stays exact.
Shapes change from micro-batch to micro-batch, so the layers are compiled for dynamic shapes from the start
(`dynamic=True`): one graph serves every length. torch's default would first compile for the first shape seen
and only then for any shape; the kernels of the two differ, so a resumed run, which sees another first shape,
would compute some steps with other kernels than the straight run did. Other variants still get graphs of
their own (the first layer's input needs no gradient under LoRA, a padding mask or none, validation without
gradients, DPO's reference with the adapter off): about a dozen, under a limit raised to `RECOMPILE_LIMIT`
and made an error (torch would otherwise fall back to eager code for the variant, silently and in an order
that depends on where the run started).

Compiled code rounds differently from eager code (fused kernels), so a job's losses are close to, not equal
to, the same job's without it; the choice is part of the checkpoint fingerprint (`checkpoint.fingerprint`)
so a resume never switches. A compiled run paused and resumed ends bit-identical to a straight compiled run
on a CPU (inductor generates the same code for the same graph; tests/training/test_compile.py).

Off by default, because it has not been seen to help: on a 2-core AMD EPYC (AVX512-BF16), SmolLM2-135M LoRA
r16 on packed micro-batches of 8 examples of 60-80 tokens, one thread, CPU time per step with eager and compiled
steps interleaved, compiled steps ran at 0.89x eager speed in bf16 and 0.85x in fp32, after ~110 s of compiling
(README, "compile"). `benchmarks/train_vs_hf.py --compile` measures it on other machines (GPUs: not yet).
"""

from __future__ import annotations

from typing import Any

import torch

RECOMPILE_LIMIT = 64
"""Graphs per compiled function (all layers share one function); torch's default is 8."""


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The model's decoder layers: transformers' `GradientCheckpointingLayer`s (every decoder block in 5.x)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_layers(model: Any) -> int:
    """Compile each decoder layer of `model` (a transformers model or a PEFT one) in place; how many were.

    Call after LoRA layers and gradient checkpointing are in place: they become part of what is compiled."""
    layers = decoder_layers(model)
    if not layers:
        raise ValueError("compile: this model has no transformers decoder layers to compile")
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
