"""Which inference engine serves requests: openft's own (CPU or GPU, Hugging Face models) or vLLM (GPU).

The choice is made once, at startup, so a misconfigured server fails there and not at its first request.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from openft.inference.engine import InferenceEngine
from openft.inference.stream import GenerationStream
from openft.inference.types import GenerationParams, GenerationResult, ModelTarget
from openft.inference.vllm_backend import VLLM_MISSING, VllmEngine

EngineName = Literal["own", "vllm", "auto"]


class ServingEngine(Protocol):
    """What the services use of an inference engine: `InferenceEngine` and `VllmEngine` both are one (type
    the services with this, not with either class)."""

    def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        *,
        org: str | None = None,
    ) -> GenerationResult: ...

    def stream_chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        *,
        org: str | None = None,
    ) -> GenerationStream: ...

    def complete(
        self,
        target: ModelTarget,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        echo: bool = False,
        org: str | None = None,
    ) -> GenerationResult: ...

    def stream_complete(
        self,
        target: ModelTarget,
        prompt: str | list[int],
        params: GenerationParams,
        *,
        echo: bool = False,
        org: str | None = None,
    ) -> GenerationStream: ...

    def context_length(self, target: ModelTarget) -> int | None: ...

    def waiting(self, target: ModelTarget) -> int: ...

    def unload(self, path: Path) -> bool: ...

    def stats(self) -> dict[str, int]: ...

    def close(self) -> None: ...


DEFAULT_MAX_ADAPTERS = 8
"""`InferenceEngine`'s default `max_adapters`, and vLLM's `max_loras` when none is given."""


def vllm_available() -> bool:
    """Does `import vllm` work here? (Found and importable: a broken install counts as missing.)"""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        importlib.import_module("vllm")
    except Exception:  # vLLM raises more than ImportError when its CUDA libraries do not match
        return False
    return True


def cuda_available() -> bool:
    """Is there a CUDA GPU for vLLM?"""
    import torch

    return bool(torch.cuda.is_available())


def choose_engine(
    name: EngineName | str,
    *,
    has_vllm: Callable[[], bool] = vllm_available,
    has_cuda: Callable[[], bool] = cuda_available,
    make_vllm: Callable[..., VllmEngine] = VllmEngine,
    **bounds: Any,
) -> ServingEngine:
    """The engine for the `inference_engine` setting: "own", "vllm", or "auto" (vLLM when it imports and a
    CUDA GPU is there, else the own engine).

    `bounds` are `InferenceEngine`'s keyword arguments (max_adapters, max_adapter_bytes, max_model_bytes, …),
    all passed to the own engine. vLLM takes only `max_adapters`, as adapters per batch (`max_loras`): it
    manages GPU memory, batches and devices itself, so the byte, batch and device bounds do not apply to it.
    "vllm" without vLLM raises RuntimeError naming the install command. `has_vllm`, `has_cuda` and
    `make_vllm` are for tests.
    """
    if name not in ("own", "vllm", "auto"):
        raise ValueError(f"Unknown inference engine {name!r}: use 'own', 'vllm' or 'auto'.")
    if name == "auto":
        name = "vllm" if has_vllm() and has_cuda() else "own"
    if name == "vllm":
        if not has_vllm():
            raise RuntimeError(VLLM_MISSING)
        return make_vllm(max_loras=bounds.get("max_adapters", DEFAULT_MAX_ADAPTERS))
    return InferenceEngine(**bounds)
