"""QLoRA's base: the frozen model loaded 4-bit NF4 with double quantization through bitsandbytes.

`fine_tuning_mode: "qlora"` (spec `quantization: "nf4"`) stores every linear layer of the base as 4-bit NormalFloat
(NF4: 16 levels placed at the quantiles of a normal distribution, which is how trained weights are spread) in
blocks of 64 weights, each with its own absmax scale; double quantization stores those scales in 8 bits too (about
0.37 bits per weight instead of 0.5). A 1.5B-parameter model's linear layers drop from 2 bytes per weight (bf16)
to about 0.52. Embeddings, norms and an untied LM head stay unquantized, in the frozen dtype (`model.frozen_dtype`:
bf16 when the job runs in bf16, else fp32); the LoRA adapters, their gradients and AdamW state stay fp32 as with
LoRA. Each 4-bit layer dequantizes its weight to the compute dtype for its matrix product (bf16 when the job's
precision is bf16, else fp32), forward and backward, so no gradient is ever taken through a 4-bit value.

Why not peft's `prepare_model_for_kbit_training`: it upcasts every non-4-bit weight to fp32 (the embeddings of a
152k-token vocabulary alone are 0.9 GB in fp32 for Qwen2.5-1.5B, twice their bf16 size) and turns on gradient
checkpointing. openft keeps the frozen weights in the frozen dtype, as LoRA does, and its own
`gradient_checkpointing` option in charge; what else the helper does (freezing the base, input grads for
reentrant checkpointing) peft's `get_peft_model` and openft's non-reentrant checkpointing already cover.

Exact resume: quantizing is a deterministic function of the base weights (blockwise absmax, nearest NF4 level), so
a resumed run quantizes the same base to the same bytes, and dequantizing is deterministic too. The quantization
is part of the checkpoint fingerprint and the compute dtype follows the pinned precision (`recipe._pin_numerics`),
so a checkpoint is never resumed against a base rounded differently.

bitsandbytes 0.50 runs NF4 layers on CUDA and on the CPU (x86-64 and arm64 wheels). Where it is missing or cannot
run on the training device, `require` raises `QuantizationUnavailable` before the model is loaded, and the job
fails with `quantization_unavailable` instead of a traceback.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch

QUANT_TYPE = "nf4"
"""The 4-bit data type (QLoRA's NormalFloat)."""
FAILURE_CODE = "quantization_unavailable"

# On x86 CPUs with bf16 instructions bitsandbytes looks for an optional hub kernel when it is imported (peft imports
# it for every LoRA job once it is installed) and logs a warning suggesting `pip install kernels` when that is absent;
# its built-in CPU kernels serve instead. Nothing for an operator to act on: said once here, not in every job's log.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


class QuantizationUnavailable(Exception):
    """bitsandbytes is not installed, or cannot run 4-bit NF4 layers on this device. The message says which."""

    code = FAILURE_CODE


def compute_dtype(frozen: Literal["fp32", "bf16"]) -> torch.dtype:
    """The dtype 4-bit layers dequantize to and compute in: the frozen weights' (bf16 exactly when the job runs in
    bf16 with LoRA, see `model.frozen_dtype`; pinned to the checkpoint's on resume)."""
    return torch.bfloat16 if frozen == "bf16" else torch.float32


def quantization_config(frozen: Literal["fp32", "bf16"]) -> Any:
    """transformers' `BitsAndBytesConfig` for QLoRA: NF4, double quantization, compute in `compute_dtype`."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANT_TYPE,
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(frozen),
    )


def require(device: torch.device) -> None:
    """Raise `QuantizationUnavailable` unless bitsandbytes can quantize, dequantize and multiply through an NF4
    layer on `device` (a 64×64 probe, milliseconds): better a clear failure now than a traceback mid-load."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # ImportError, or a native library that fails to load
        raise QuantizationUnavailable(
            f"fine_tuning_mode qlora needs bitsandbytes, which cannot be imported on this server ({exc}); "
            "use fine_tuning_mode lora"
        ) from exc
    try:
        with torch.no_grad():
            weight = torch.linspace(-1, 1, 64 * 64).reshape(64, 64)
            layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type=QUANT_TYPE, compress_statistics=True)
            layer.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, quant_type=QUANT_TYPE, compress_statistics=True
            )
            layer = layer.to(device)  # quantized on the way (to the same device, too)
            out = layer(torch.ones(2, 64, device=device))
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("the 4-bit probe computed non-finite values")
    except Exception as exc:
        raise QuantizationUnavailable(
            f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run 4-bit NF4 layers on this "
            f"{device.type} ({type(exc).__name__}: {exc}); use fine_tuning_mode lora"
        ) from exc


def load_quantized(
    path: Path, device: torch.device, frozen: Literal["fp32", "bf16"], attn_implementation: str | None = None
) -> Any:
    """The causal LM at `path` with its linear layers in 4-bit NF4 on `device`, everything else in `frozen`, with
    `attn_implementation`'s attention kernel (None: transformers' default), as `model.load_model` loads the others.

    Each weight is quantized as it is read (on the device it is placed on), so the full-precision model never
    exists in memory at once."""
    from transformers import AutoModelForCausalLM

    require(device)
    with _read_not_mapped(), _big_buffers_unmapped_when_freed():
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quantization_config(frozen),
            dtype=compute_dtype(frozen),
            device_map={"": str(device)},
            attn_implementation=attn_implementation,
            trust_remote_code=False,  # never run a model's own code
        )
    keep_one_kernel(model)
    _return_freed_memory()
    return model


M_MMAP_THRESHOLD = -3
"""glibc's `mallopt` parameter: allocations of at least this many bytes get pages of their own (mmap)."""
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
"""The largest threshold glibc's own adjustment reaches on 64-bit systems, where training's allocations put it."""


@contextmanager
def _big_buffers_unmapped_when_freed() -> Iterator[None]:
    """While quantizing, give every buffer over 1 MiB pages of its own, returned to the system when it is freed.

    glibc raises its threshold for that as large buffers are freed (up to 32 MiB), after which a Qwen2.5-1.5B
    layer's 27 MiB bf16 weights come from its heap, where the small 4-bit copies allocated in between keep the
    freed space from shrinking: the load's peak was 2.4 GiB instead of 1.9 (`benchmarks/lora_memory.py`, 28
    layers). Afterwards the threshold is set where glibc's adjustment would have taken it. Not glibc: nothing."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        yield
        return
    mallopt(M_MMAP_THRESHOLD, 1 << 20)
    try:
        yield
    finally:
        mallopt(M_MMAP_THRESHOLD, GLIBC_MMAP_THRESHOLD_MAX)


def _libc() -> Any:
    """The C library where it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _return_freed_memory() -> None:
    """Give the pages of the buffers freed while quantizing back to the system (glibc's `malloc_trim`).

    Each weight was read into a buffer of its own and freed once quantized; glibc keeps most of those pages in
    its heap, where the 4-bit weights allocated in between pin them, so they would count in the trainer's memory
    for its whole life (370 MiB of a 2.4 GiB peak on an 8-layer Qwen2.5-1.5B shape, `benchmarks/lora_memory.py`).
    Not glibc (macOS, musl): nothing to do."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@contextmanager
def _read_not_mapped() -> Iterator[None]:
    """Have transformers read the checkpoint's tensors with `pread` instead of memory-mapping the file.

    transformers maps a safetensors file and, on CPU, keeps its unquantized tensors (the embeddings) as views of
    that mapping, so the whole file stays mapped for the life of the process, and every page read while
    quantizing stays resident: a Qwen2.5-1.5B-shaped trainer kept its 3 GB bf16 file in its resident set, more
    than the 4-bit model itself (`benchmarks/lora_memory.py`). Read with `pread`, each tensor is a buffer of its
    own, freed once quantized. transformers does this itself on Windows and MPS; it has no option for it, so its
    call to safetensors' `safe_open` is given `backend="pread"` while the model loads (only where it passes a
    backend, i.e. where that safetensors supports one)."""
    import transformers.modeling_utils

    loader: Any = transformers.modeling_utils  # Any: its `safe_open` is a class, replaced here by a function
    original = getattr(loader, "safe_open", None)
    if original is None:  # another transformers layout: keep its own loading
        yield
        return

    def read_with_pread(*args: Any, **kwargs: Any) -> Any:
        if "backend" in kwargs:
            kwargs["backend"] = "pread"
        return original(*args, **kwargs)

    loader.safe_open = read_with_pread
    try:
        yield
    finally:
        loader.safe_open = original


def keep_one_kernel(model: Any) -> None:
    """Make every 4-bit layer compute the same way in eval and in training: dequantize, then a torch matmul.

    On CPUs with AVX512-BF16, bitsandbytes 0.50's `Linear4bit` repacks its weight in place for a fused inference
    kernel the first time it runs in eval mode under no_grad, and keeps it that way: every later forward, training
    ones included, then goes through that kernel, which has no backward, so gradients stop at the first 4-bit layer
    and the adapters below it learn from wrong gradients (torch only warns). The recipe runs eval-mode passes before
    training (`forward.check_model`) and between steps (validation), so that path is switched off here; it would also
    give validation other numbers than training computes (tests/training/test_qlora.py checks both)."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def logical_numel(parameter: torch.Tensor) -> int:
    """The number of weights a parameter stands for: a 4-bit parameter packs two into each of its bytes."""
    state = getattr(parameter, "quant_state", None)
    return int(state.shape.numel()) if state is not None else parameter.numel()


def describe(frozen: Literal["fp32", "bf16"]) -> str:
    """The log line that says what QLoRA loaded."""
    name = "bf16" if frozen == "bf16" else "fp32"
    return (
        f"QLoRA: the base's linear layers are 4-bit NF4 with double quantization (bitsandbytes), computing in "
        f"{name}; its other frozen weights are {name}, the adapters fp32"
    )
