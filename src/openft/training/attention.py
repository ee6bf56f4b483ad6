"""Which attention kernel a training run gets, and how packed rows are described to it.

Packing puts several examples in one row (`packing.py`); attention must then stay inside each example.
Three ways, by device and install (`pick_attention`, decided when the model is loaded, since transformers
fixes `attn_implementation` at `from_pretrained`):

- **CPU: SDPA with a dense mask** (`sdpa`, transformers' default). Packed rows carry position ids that
  restart at 0 for each example; transformers turns the restarts into a block-diagonal causal
  [rows, 1, width, width] mask.
  Attention costs width² per row whatever the mask hides, so `packing.py` keeps rows no wider than the
  longest example. This path is the one every exactness test runs on.
- **CUDA with `flash-attn` installed, under bf16: flash-attention's variable-length kernels**
  (`flash_attention_2`). The whole micro-batch is one row, end to end with no padding, and the model gets
  the examples' boundaries as `cu_seq_lens_q/k` (cumulative lengths) and `max_length_q/k`, which
  transformers hands to `flash_attn_varlen_func` in every layer (its `FlashAttentionKwargs`); each example
  costs its own length², and nothing is spent on padding. (transformers could infer the boundaries from the
  position ids itself, but only for a single row and with a device sync in every layer; given once, they
  cost one small host-to-device copy per forward.) flash-attn has no fp32 kernel, so fp32 jobs take flex.
- **Other CUDA GPUs (compute capability 8.0 and newer): PyTorch flex attention** (`flex_attention`) with a
  `BlockMask` built from each token's example index: causal and same-example. The micro-batch is again one
  row without padding; the block mask lets the kernel skip the 128×128 tiles where no two tokens share an
  example, so the cost follows the examples' lengths too. transformers passes a 4-D `BlockMask` given as
  `attention_mask` straight to the kernel (checked in 5.24: `masking_utils._preprocess_mask_arguments`
  returns it as is; `integrations.flex_attention` uses it as `block_mask`), and compiles `flex_attention`
  once (`torch.compile`, dynamic shapes after the first new length). Older GPUs keep SDPA's dense mask.
  transformers' flex path has no attention dropout: a model whose config sets `attention_dropout` fails
  its first training step there (`OPENFT_ATTENTION=sdpa` runs it).

`OPENFT_ATTENTION` (`sdpa`, `flash_attention_2` or `flex_attention`) overrides the choice on CUDA, for an
operator whose GPU or install misbehaves; it has no effect on a CPU, where the dense path is always used.

Per-example log-probs are those of unpacked training either way (float tolerance): `forward.check_model`
tries the model's layout before training and the recipe packs only where it agrees. The flex path's logic
is tested on the CPU (flex attention runs forward-only on a CPU); the flash path's row description is
tested on the CPU through a pure-PyTorch variable-length kernel (tests/training/test_attention.py); neither
has been run on a GPU here.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from openft.training.precision import Precision

ENV_OVERRIDE = "OPENFT_ATTENTION"
SDPA = "sdpa"
FLASH = "flash_attention_2"
FLEX = "flex_attention"


@dataclass(frozen=True)
class Kernel:
    """What openft needs to know about one of transformers' attention implementations."""

    name: str
    """transformers' `attn_implementation` name."""
    packed_rows: Literal["position_ids", "cu_seqlens", "block_mask"]
    """How packed rows are described: restarting position ids alone (transformers builds the mask), example
    boundaries for a variable-length kernel, or a flex `BlockMask`."""
    fp32: bool
    """Whether it computes in fp32 (flash-attention has only fp16/bf16 kernels)."""

    @property
    def one_row(self) -> bool:
        """Whether packing puts the whole micro-batch in one row: with a kernel that works per example, a row's
        attention costs the sum of its examples' squares, so wider rows cost nothing and need no padding."""
        return self.packed_rows != "position_ids"


KERNELS = {
    SDPA: Kernel(SDPA, "position_ids", fp32=True),
    "eager": Kernel("eager", "position_ids", fp32=True),
    FLASH: Kernel(FLASH, "cu_seqlens", fp32=False),
    "flash_attention_3": Kernel("flash_attention_3", "cu_seqlens", fp32=False),
    FLEX: Kernel(FLEX, "block_mask", fp32=True),
}


def kernel_of(model: Any) -> Kernel:
    """The kernel a loaded transformers model (not a PEFT wrapper: `forward.causal_lm`) runs; an unknown
    implementation is treated like SDPA (position ids alone), which `check_model` then tries."""
    name = getattr(getattr(model, "config", None), "_attn_implementation", None) or SDPA
    return KERNELS.get(name, Kernel(name, "position_ids", fp32=True))


def flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_attention(device: torch.device, precision: Precision) -> str | None:
    """The `attn_implementation` to load the model with (see the module docstring for why); None leaves
    transformers' default (SDPA, where the model has it), as on the CPU."""
    if device.type != "cuda":
        return None
    forced = os.environ.get(ENV_OVERRIDE, "").strip()
    if forced:
        if forced not in (SDPA, FLASH, FLEX):
            raise ValueError(f"{ENV_OVERRIDE} must be one of {SDPA}, {FLASH}, {FLEX}; got {forced!r}")
        return forced
    if precision == "bf16" and flash_attn_installed():
        return FLASH
    if torch.cuda.get_device_capability(device) >= (8, 0):
        return FLEX
    return None


def resume_attention(saved: str | None, device: torch.device, precision: Precision) -> tuple[str | None, str | None]:
    """The kernel a resumed run loads with, and a warning when it cannot be the checkpoint's.

    Kernels round differently, so a resume keeps the checkpoint's (`LoopState.attention`; None is transformers'
    default, what every run on a CPU and every checkpoint written before this choice used). Where that kernel is
    not available any more (flash-attn uninstalled, a GPU checkpoint resumed on a CPU), today's choice is used
    and the warning says the results will differ from a straight run's."""
    if saved is None or saved == SDPA:
        return saved, None
    available = device.type == "cuda" and (saved != FLASH or flash_attn_installed())
    if available:
        return saved, None
    picked = pick_attention(device, precision)
    return picked, (
        f"the checkpoint trained with the {saved} attention kernel, which this machine cannot run; using "
        f"{picked or SDPA}: the steps from here round differently from a straight run's"
    )


def packed_inputs(
    kernel: Kernel, position_ids: torch.Tensor, sequence_index: torch.Tensor, segments: Sequence[int]
) -> dict[str, Any]:
    """The model inputs that describe packed rows to `kernel` (on the rows' device).

    `segments`: the length of every run of restarting position ids, row after row (padding included, as a
    run of its own), so their cumulative sums index the flattened rows.
    """
    inputs: dict[str, Any] = {"position_ids": position_ids}
    if kernel.packed_rows == "cu_seqlens":
        inputs.update(varlen_boundaries(segments, position_ids.device))
    elif kernel.packed_rows == "block_mask":
        inputs["attention_mask"] = document_block_mask(sequence_index)
    return inputs


def varlen_boundaries(segments: Sequence[int], device: torch.device) -> dict[str, Any]:
    """flash-attention's varlen arguments: `cu_seq_lens` = [0, l1, l1+l2, ...] (int32), and the longest length
    as a Python int (a tensor would cost a device sync in every layer)."""
    cumulative = [0]
    for length in segments:
        cumulative.append(cumulative[-1] + length)
    cu = torch.tensor(cumulative, dtype=torch.int32).to(device, non_blocking=True)
    longest = max(segments)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def document_block_mask(sequence_index: torch.Tensor) -> Any:
    """A flex-attention `BlockMask` over [rows, width]: token q sees token k when k ≤ q and both belong to the
    same example. Padding (index -1) is one more "example" of its row, so no query is left with nothing to see.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    documents = sequence_index

    def same_example_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return (documents[b, q] == documents[b, k]) & (k <= q)

    rows, width = sequence_index.shape
    build = _compiled_create_block_mask() if sequence_index.device.type == "cuda" else create_block_mask
    return build(same_example_causal, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=sequence_index.device)


@functools.cache
def _compiled_create_block_mask() -> Any:
    """Compiled, `create_block_mask` evaluates the mask tile by tile instead of as one [width, width] tensor."""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


@contextmanager
def fp32_attention(model: Any) -> Iterator[None]:
    """Run `model` (a transformers model) with an fp32-capable kernel meanwhile: SDPA in place of one that has
    none (flash-attention), so `check_model` can compare layouts at fp32 precision. Others are left as they are."""
    kernel = kernel_of(model)
    if kernel.fp32:
        yield
        return
    model.set_attn_implementation(SDPA)
    try:
        yield
    finally:
        model.set_attn_implementation(kernel.name)


def kernel_precision(kernel: Kernel, device: torch.device) -> AbstractContextManager[object]:
    """Where the kernel has no fp32 path, the bf16 autocast it needs; else nothing."""
    if kernel.fp32:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
