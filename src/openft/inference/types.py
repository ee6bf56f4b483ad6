"""The engine's inputs and outputs: plain dataclasses; importing this module alone does not load torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openft.errors import InvalidRequest
from openft.inference.json_schema import SchemaNode, compile_schema

FinishReason = Literal["stop", "length", "tool_calls"]

MAX_N = 128
"""OpenAI's limit on `n`."""
MAX_TOP_LOGPROBS = 20


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


ToolChoice = Literal["none", "auto", "required"] | dict[str, Any]


@dataclass
class GenerationParams:
    """Sampling settings of one request (OpenAI names, defaults and ranges; bad values → InvalidRequest)."""

    max_tokens: int | None = None
    """Most tokens to generate per choice; None: the room left in the context, at most 512."""
    temperature: float = 1.0
    """0 means greedy decoding (deterministic). At most 2."""
    top_p: float = 1.0
    n: int = 1
    stop: list[str] | None = None
    """Strings that end a choice; the matched string is not included in the text. Empty strings are ignored."""
    seed: int | None = None
    """Makes sampling reproducible: the same seed and request give the same text."""
    presence_penalty: float = 0.0
    """−2..2: subtracted once from the logit of every token the choice has generated so far."""
    frequency_penalty: float = 0.0
    """−2..2: subtracted from a token's logit once per time the choice has generated it so far."""
    logprobs: bool = False
    """Return the log-probability of each generated token (see `TokenLogprob`)."""
    top_logprobs: int = 0
    """0..20 most likely alternatives per token; needs `logprobs`."""
    json_object: bool = False
    """`response_format={"type": "json_object"}`: constrain decoding to one JSON object (see `InferenceEngine`)."""
    json_schema: dict[str, Any] | None = None
    """A strict `response_format` json_schema's schema: decoding follows it (`openft.inference.json_schema`);
    checked here, so a keyword that is not enforced is a 400 before any work. Needs `json_object`."""
    tool_choice: ToolChoice | None = None
    """"none", "auto", "required" or {"type": "function", "function": {"name": …}}; None: "auto" when tools
    are given. Checked against the tools by the engine."""

    schema: SchemaNode | None = field(init=False, repr=False, compare=False)
    """`json_schema` compiled."""

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1.", param="max_tokens")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise InvalidRequest("temperature must be between 0 and 2.", param="temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be greater than 0 and at most 1.", param="top_p")
        if not 1 <= self.n <= MAX_N:
            raise InvalidRequest(f"n must be between 1 and {MAX_N}.", param="n")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise InvalidRequest(f"{name} must be between -2 and 2.", param=name)
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}.", param="top_logprobs")
        if self.top_logprobs and not self.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs set to true.", param="top_logprobs")
        if self.stop is not None and (len(self.stop) > 4 or not all(isinstance(s, str) for s in self.stop)):
            raise InvalidRequest("stop must be a string or a list of at most 4 strings.", param="stop")
        self._check_tool_choice()
        self.schema = compile_schema(self.json_schema) if self.json_schema is not None else None
        if self.schema is not None and not self.json_object:
            raise InvalidRequest("json_schema needs json_object.", param="response_format")

    def _check_tool_choice(self) -> None:
        choice = self.tool_choice
        if choice is None or choice in ("none", "auto", "required"):
            return
        function = choice.get("function") if isinstance(choice, dict) else None
        if not (
            isinstance(choice, dict)
            and choice.get("type") == "function"
            and isinstance(function, dict)
            and isinstance(function.get("name"), str)
        ):
            raise InvalidRequest(
                'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": …}}.',
                param="tool_choice",
            )

    @property
    def penalized(self) -> bool:
        return self.presence_penalty != 0 or self.frequency_penalty != 0


@dataclass(frozen=True)
class TopLogprob:
    token: str
    """The token's text; a token that is only part of a UTF-8 character reads `bytes:\\xe2\\x80`."""
    logprob: float
    bytes: list[int]
    """The token's UTF-8 bytes (OpenAI's field): several tokens may make up one character."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability (OpenAI's `logprobs.content[i]`).

    Log-probabilities are the log-softmax of the model's logits after presence/frequency penalties and
    before temperature and top_p (OpenAI's convention: they do not depend on the sampling settings, and
    greedy decoding still reports real probabilities). With json_object or a forced tool call, they are
    those of the unconstrained distribution.
    """

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class ToolCall:
    id: str
    """`call_…`, unique per call."""
    name: str
    arguments: str
    """JSON text, as in OpenAI's `function.arguments`."""


@dataclass
class GenerationChoice:
    text: str | None
    """The reply; None when it is only tool calls."""
    finish_reason: FinishReason
    """"stop": end-of-sequence token, a stop string, or a complete JSON object (json_object); "length":
    max_tokens or the context was reached; "tool_calls": tools were given and the reply calls them."""
    logprobs: list[TokenLogprob] | None = None
    """With `params.logprobs`: one entry per generated token of the text (forced tokens and the final
    end-of-sequence token excluded); else None."""
    tool_calls: list[ToolCall] | None = None


@dataclass
class GenerationResult:
    choices: list[GenerationChoice]
    prompt_tokens: int
    completion_tokens: int
    """Tokens generated over all choices, including a final end-of-sequence token and stop-string tokens."""


@dataclass(frozen=True)
class StreamDelta:
    """What one choice adds to its reply; a stream's deltas for a choice concatenate to its `GenerationChoice`.

    The last delta of each choice has a `finish_reason` (and the tool calls, all at once, if any).
    """

    index: int
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: FinishReason | None = None
