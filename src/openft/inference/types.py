"""The engine's inputs and outputs: plain dataclasses; importing this module alone does not load torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openft.errors import InvalidRequest


@dataclass(frozen=True)
class ModelTarget:
    """Which weights answer a request; the service resolves model names to these folders."""

    base_path: Path
    """Hugging Face folder of the base model (config, weights, tokenizer)."""
    adapter_path: Path | None = None
    """PEFT adapter folder (adapter_config.json + adapter_model.safetensors) applied on top; None for none."""
    full_model_path: Path | None = None
    """A fully fine-tuned HF model folder loaded instead of `base_path`'s weights; None for the base weights.
    Its own tokenizer is used when the folder has one, else `base_path`'s."""

    @property
    def weights_path(self) -> Path:
        """The folder whose weights are loaded (and shared by every adapter on top of them)."""
        return self.full_model_path or self.base_path


@dataclass
class GenerationParams:
    """Sampling settings of one request (OpenAI names and defaults)."""

    max_tokens: int | None = None
    """Most tokens to generate per choice; None: the room left in the context, at most 512."""
    temperature: float = 1.0
    """0 means greedy decoding (deterministic)."""
    top_p: float = 1.0
    n: int = 1
    stop: list[str] | None = None
    """Strings that end a choice; the matched string is not included in the text. Empty strings are ignored."""
    seed: int | None = None
    """Makes sampling reproducible: the same seed and request give the same text."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        if self.temperature < 0:
            raise InvalidRequest("temperature must not be negative.", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be greater than 0 and at most 1.", param="top_p")
        if self.n < 1:
            raise InvalidRequest("n must be at least 1.", param="n")


@dataclass
class GenerationChoice:
    text: str
    finish_reason: Literal["stop", "length"]
    """"stop": end-of-sequence token or a stop string; "length": max_tokens or the context was reached."""


@dataclass
class GenerationResult:
    choices: list[GenerationChoice]
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated over all choices, including a final end-of-sequence token and stop-string tokens."""
