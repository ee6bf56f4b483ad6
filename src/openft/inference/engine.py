"""`InferenceEngine`: chat completions from a base model, a LoRA adapter on it, or a full fine-tune."""

from __future__ import annotations

from typing import Any

from openft.errors import ContextLengthExceeded
from openft.inference.decoding import generate_choices
from openft.inference.prompt import render_prompt
from openft.inference.registry import ModelRegistry, read_context_length
from openft.inference.sampling import TokenSampler
from openft.inference.types import GenerationParams, GenerationResult, ModelTarget

DEFAULT_MAX_TOKENS = 512
"""Reply length when the request sets no max_tokens (further capped by the room left in the context)."""


class InferenceEngine:
    """Answers chat requests on the CPU with Hugging Face models, loading them on first use.

    Thread-safe: call `chat` from several threads. Requests on the same base run one at a time (they
    share its weights and its active adapter); requests on different bases run in parallel.
    """

    def __init__(self, max_adapters: int = 8):
        """`max_adapters`: LoRA adapters kept loaded per base model; the least recently used is unloaded."""
        self._registry = ModelRegistry(max_adapters)

    def chat(
        self,
        target: ModelTarget,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
    ) -> GenerationResult:
        """Generate `params.n` assistant replies to `messages`, rendered with the model's chat template.

        Each reply has at most `params.max_tokens` tokens, or, when that is None, DEFAULT_MAX_TOKENS (512);
        either way it is capped by the room the prompt leaves in the model's context, and a reply cut by
        that cap ends with finish_reason "length". Raises ContextLengthExceeded (param "messages") when the
        prompt leaves no room at all, and InvalidRequest for content the template or model cannot take.
        """
        sampler = TokenSampler(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        with self._registry.use(target) as active:
            prompt_ids = render_prompt(active.tokenizer, messages, tools)
            max_new_tokens = _max_new_tokens(len(prompt_ids), active.context_length, params.max_tokens)
            choices, completion_tokens = generate_choices(
                active.model,
                prompt_ids,
                n=params.n,
                max_new_tokens=max_new_tokens,
                sampler=sampler,
                stop_token_ids=active.stop_token_ids,
                stop_strings=[s for s in params.stop or [] if s],
                decode=lambda ids: active.tokenizer.decode(ids, skip_special_tokens=True),
            )
        return GenerationResult(choices=choices, prompt_tokens=len(prompt_ids), completion_tokens=completion_tokens)

    def context_length(self, target: ModelTarget) -> int | None:
        """The target's context window in tokens, read from its config; None when the config has none."""
        return read_context_length(target)


def _max_new_tokens(prompt_tokens: int, context_length: int | None, requested: int | None) -> int:
    wanted = requested if requested is not None else DEFAULT_MAX_TOKENS
    if context_length is None:
        return wanted
    room = context_length - prompt_tokens
    if room <= 0:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context_length} tokens, but the messages take "
            f"{prompt_tokens} tokens, which leaves no room for a reply. Shorten the messages.",
            param="messages",
        )
    return min(wanted, room)
