"""Packing without dense masks (training/attention.py): which kernel a device gets, and per-example results
equal to unpacked training with each kernel's description of packed rows.

No GPU here, so:
- flex attention runs for real, forward only (PyTorch has no flex backward on a CPU): packed one-row forward
  with the document block mask gives each example what it gets alone;
- flash-attention is not installed: its row description (`cu_seq_lens_*`, `max_length_*` for
  `flash_attn_varlen_func`) is checked through a pure-PyTorch variable-length kernel registered with
  transformers, which attends within the boundaries it is given and nowhere else, forward and backward.
  That proves the boundaries and their path through the model (PEFT, gradient checkpointing); the flash
  kernel itself is untested here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from openft.training import attention
from openft.training.attention import Kernel, pick_attention, varlen_boundaries
from openft.training.forward import ForwardPass, ModelSupport, check_model, score_targets
from openft.training.packing import Tokens, build_rows
from tests.training.test_packing import sequences

CPU = torch.device("cpu")
VARLEN_REFERENCE = "openft_varlen_reference"
LEAKY_VARLEN = "openft_varlen_leaky"


# Which kernel where ----------------------------------------------------------------------------------


def test_the_cpu_always_gets_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    monkeypatch.setenv(attention.ENV_OVERRIDE, attention.FLEX)
    assert pick_attention(CPU, "bf16") is None and pick_attention(CPU, "fp32") is None  # transformers' default


@pytest.mark.parametrize(
    ("flash", "precision", "capability", "expected"),
    [
        (True, "bf16", (9, 0), "flash_attention_2"),
        (True, "fp32", (9, 0), "flex_attention"),  # flash-attention has no fp32 kernel
        (False, "bf16", (8, 0), "flex_attention"),
        (False, "bf16", (7, 5), None),  # flex needs Ampere or newer: transformers' default (SDPA)
    ],
)
def test_cuda_gets_varlen_kernels(
    monkeypatch: pytest.MonkeyPatch, flash: bool, precision: Any, capability: tuple[int, int], expected: str | None
) -> None:
    monkeypatch.delenv(attention.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: flash)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_attention(torch.device("cuda"), precision) == expected


def test_the_operator_can_force_a_kernel_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    monkeypatch.setenv(attention.ENV_OVERRIDE, "sdpa")
    assert pick_attention(torch.device("cuda"), "bf16") == "sdpa"
    monkeypatch.setenv(attention.ENV_OVERRIDE, "xformers")
    with pytest.raises(ValueError, match=attention.ENV_OVERRIDE):
        pick_attention(torch.device("cuda"), "bf16")


def test_a_resume_keeps_the_checkpoints_kernel_where_it_can_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels round differently: a resume loads the checkpoint's, and says so when it cannot."""
    monkeypatch.delenv(attention.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: False)
    # Written with SDPA (or before the choice existed): SDPA again, even where flex would be picked today.
    assert attention.resume_attention(None, cuda, "bf16") == (None, None)
    assert attention.resume_attention("sdpa", cuda, "bf16") == ("sdpa", None)
    assert attention.resume_attention("flex_attention", cuda, "bf16") == ("flex_attention", None)
    # flash-attn uninstalled since: today's pick, with a warning that the rounding changes.
    kernel, warning = attention.resume_attention("flash_attention_2", cuda, "bf16")
    assert kernel == "flex_attention" and warning is not None and "flash_attention_2" in warning
    monkeypatch.setattr(attention, "flash_attn_installed", lambda: True)
    assert attention.resume_attention("flash_attention_2", cuda, "bf16") == ("flash_attention_2", None)
    # A GPU checkpoint resumed on a CPU: the dense path.
    kernel, warning = attention.resume_attention("flex_attention", cpu, "bf16")
    assert kernel is None and warning is not None


def test_kernels_and_their_layouts() -> None:
    class Config:
        _attn_implementation = "flash_attention_2"

    class Model:
        config = Config()

    assert attention.kernel_of(Model()) == Kernel("flash_attention_2", "cu_seqlens", fp32=False)
    Config._attn_implementation = "flex_attention"
    assert attention.kernel_of(Model()).one_row and attention.kernel_of(Model()).fp32
    Config._attn_implementation = "some_new_kernel"  # unknown: described as for SDPA, and check_model decides
    assert attention.kernel_of(Model()) == Kernel("some_new_kernel", "position_ids", fp32=True)
    assert not attention.kernel_of(object()).one_row


# The one-row layout and its boundaries -------------------------------------------------------------


def test_one_row_puts_the_micro_batch_end_to_end_without_padding() -> None:
    a = Tokens([1, 2, 3, 4], [False, False, True, True])
    b = Tokens([5, 6, 7], [False, True, True])
    c = Tokens([8, 9, 10, 11, 12, 13, 14], [True] * 7)
    rows = build_rows([a, b, c], pad_id=0, packed=True, one_row=True)
    assert rows.attention_mask is None
    assert rows.input_ids.tolist() == [[8, 9, 10, 11, 12, 13, 14, 1, 2, 3, 4, 5, 6, 7]]  # longest first
    assert rows.position_ids is not None
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 0, 1, 2]]
    assert rows.sequence_index.tolist() == [[2] * 7 + [0] * 4 + [1] * 3]
    assert rows.segments == (7, 4, 3)
    ignore = -100
    assert rows.targets.tolist() == [[9, 10, 11, 12, 13, 14, ignore, ignore, 3, 4, ignore, 6, 7, ignore]]
    # One sequence: the plain unpacked row, as before.
    alone = build_rows([c], pad_id=0, packed=True, one_row=True)
    assert alone.position_ids is None and alone.segments == ()


def test_boundaries_for_the_varlen_kernel() -> None:
    found = varlen_boundaries((7, 4, 3), CPU)
    assert found["cu_seq_lens_q"].tolist() == [0, 7, 11, 14] and found["cu_seq_lens_q"].dtype == torch.int32
    assert found["cu_seq_lens_k"] is found["cu_seq_lens_q"]
    assert found["max_length_q"] == found["max_length_k"] == 7 and isinstance(found["max_length_q"], int)
    # Rows of the dense layout, padding included, index the flattened rows just as well.
    rows = build_rows([Tokens([1, 2, 3], [True] * 3), Tokens([4, 5], [True] * 2), Tokens([6], [True])], 0, packed=True)
    assert rows.input_ids.shape == (2, 3) and rows.segments == (3, 2, 1)
    padded = build_rows([Tokens([1, 2, 3], [True] * 3), Tokens([4], [True]), Tokens([5], [True])], 0, packed=True)
    assert padded.position_ids is not None and padded.segments == (3, 1, 1, 1)  # [1 2 3] [4 5 pad]


def test_the_block_mask_is_causal_within_each_example() -> None:
    sequence_index = torch.tensor([[0, 0, 0, 1, 1, 2, -1, -1]])
    mask = attention.document_block_mask(sequence_index)
    assert tuple(mask.shape) == (1, 1, 8, 8)
    q, k = torch.arange(8)[:, None], torch.arange(8)[None, :]
    b, h = torch.zeros((), dtype=torch.long), torch.zeros((), dtype=torch.long)
    dense = mask.mask_mod(b, h, q, k)
    expected = (sequence_index[0][:, None] == sequence_index[0][None, :]) & (k <= q)
    assert torch.equal(dense, expected)
    # It is what the flex kernel is given for packed rows, in place of a 2-D mask.
    flex = attention.KERNELS[attention.FLEX]
    inputs = attention.packed_inputs(flex, torch.zeros(1, 8, dtype=torch.long), sequence_index, (3, 2, 1, 2))
    assert isinstance(inputs["attention_mask"], BlockMask) and "cu_seq_lens_q" not in inputs


# Flex attention, for real (forward only on a CPU) ----------------------------------------------------


@pytest.fixture(scope="module")
def flex_model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation="flex_attention"
    )
    model.eval()
    return model


@pytest.mark.slow  # flex attention is compiled (inductor) on first use: ~20 s per new shape on this CPU
def test_flex_packed_per_example_results_equal_unpacked(flex_model: Any) -> None:
    seqs = sequences([17, 5, 30, 12, 9, 26, 4])
    forward = ForwardPass(pad_id=0, packed=True, split_head=True, device=CPU, precision="fp32")
    with torch.no_grad():
        packed = forward(flex_model, seqs)  # one row of 103 tokens, the block mask keeping the examples apart
        flex_model.set_attn_implementation("sdpa")
        try:
            alone = [score_targets(flex_model, build_rows([s], 0, packed=False), split_head=False) for s in seqs]
        finally:
            flex_model.set_attn_implementation("flex_attention")
    expected = torch.stack([scores.logprobs.sum() for scores in alone])
    torch.testing.assert_close(packed.per_sequence(packed.logprobs), expected, rtol=1e-5, atol=1e-5)
    assert check_model(flex_model, pad_id=0, device=CPU) == ModelSupport(split_head=True, packing=True)


# The flash-attention description, through a pure-PyTorch variable-length kernel ---------------------


def _varlen_reference(
    module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any, **kwargs: Any
) -> tuple[torch.Tensor, None]:
    """What `flash_attn_varlen_func` computes: causal attention within each [cu[i], cu[i+1]) of the flattened
    rows, nothing across. Without boundaries, a row is one sequence (as flash-attention without varlen)."""
    assert attention_mask is None, "a varlen kernel gets boundaries, not a mask"
    rows, heads, width, dim = query.shape
    flat = [x.transpose(1, 2).reshape(rows * width, x.shape[1], dim) for x in (query, key, value)]
    cu = kwargs.get("cu_seq_lens_q")
    bounds = cu.tolist() if cu is not None else [r * width for r in range(rows + 1)]
    out = torch.empty_like(flat[0])
    for start, end in itertools.pairwise(bounds):
        q, k, v = (x[start:end].transpose(0, 1) for x in flat)  # [heads, tokens, dim]
        out[start:end] = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=kwargs.get("scaling"), enable_gqa=True
        ).transpose(0, 1)
    return out.reshape(rows, width, heads, dim), None


def _leaky_varlen(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kwargs: Any):
    """A kernel that drops the boundaries (as a model that did not pass them on would): attends across examples."""
    kwargs.pop("cu_seq_lens_q", None)
    return _varlen_reference(module, query, key, value, mask, **kwargs)


@pytest.fixture
def varlen_kernels(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Both registered with transformers, and described to openft as flash-attention is (no fp32 kernel)."""
    from transformers import AttentionInterface

    for name, function in ((VARLEN_REFERENCE, _varlen_reference), (LEAKY_VARLEN, _leaky_varlen)):
        AttentionInterface.register(name, function)
        monkeypatch.setitem(attention.KERNELS, name, Kernel(name, "cu_seqlens", fp32=False))
    yield


@pytest.fixture
def lora_model(tiny_model_dir: Path, varlen_kernels: None) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from openft.training.model import enable_gradient_checkpointing

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, attn_implementation=VARLEN_REFERENCE
    )
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero; make the adapters count
            torch.nn.init.normal_(parameter, std=0.02)
    enable_gradient_checkpointing(model)
    model.train()
    return model


def _losses_and_grads(model: Any, seqs: list[Tokens], *, packed: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    forward = ForwardPass(pad_id=0, packed=packed, split_head=True, device=CPU, precision="fp32")
    scores = forward(model, seqs)
    per_example = scores.per_sequence(-scores.logprobs)
    per_example.sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    return per_example.detach(), grads


def test_varlen_packed_losses_and_gradients_equal_unpacked(lora_model: Any) -> None:
    """LoRA with gradient checkpointing: the boundaries reach every layer, in the forward and the recomputation."""
    seqs = sequences([17, 5, 30, 12, 9, 26, 4])
    packed_losses, packed_grads = _losses_and_grads(lora_model, seqs, packed=True)
    base = lora_model.get_base_model()
    base.set_attn_implementation("sdpa")
    unpacked_losses, unpacked_grads = _losses_and_grads(lora_model, seqs, packed=False)
    torch.testing.assert_close(packed_losses, unpacked_losses, rtol=1e-5, atol=1e-5)
    for got, want in zip(packed_grads, unpacked_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_check_model_with_a_varlen_kernel(tiny_model_dir: Path, varlen_kernels: None) -> None:
    """The layouts are compared at fp32 with SDPA in the kernel's place; the kernel then shows it keeps the
    examples apart (bf16, as flash-attention runs). A kernel that lets attention cross is refused packing."""
    from transformers import AutoModelForCausalLM

    for name, packs in ((VARLEN_REFERENCE, True), (LEAKY_VARLEN, False)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation=name)
        model.train()
        assert check_model(model, pad_id=0, device=CPU) == ModelSupport(split_head=True, packing=packs)
        assert model.config._attn_implementation == name  # put back after the fp32 comparison
        assert model.training  # the mode it was found in
