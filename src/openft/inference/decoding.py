"""The token-by-token generation loop over `n` copies of one prompt.

A plain loop rather than `model.generate`: it samples with a private RNG (see `TokenSampler`), ends
each choice on its own stop strings, and is the natural place to yield tokens for streaming later.
The `n` rows share one prompt, so they need no padding and one forward pass serves them all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from transformers import DynamicCache

from openft.inference.sampling import TokenSampler
from openft.inference.types import GenerationChoice


class _Choice:
    """One row of the batch: its tokens so far, and why it ended (None while still going)."""

    def __init__(self, stop_strings: Sequence[str], decode: Callable[[list[int]], str]):
        self._stop_strings = stop_strings
        self._decode = decode
        self.token_ids: list[int] = []
        self.generated = 0  # includes the end-of-sequence token, which is not part of the text
        self.stopped_text: str | None = None
        self.finish_reason: str | None = None

    def add(self, token_id: int, stop_token_ids: Collection[int]) -> None:
        self.generated += 1
        if token_id in stop_token_ids:
            self.finish_reason = "stop"
            return
        self.token_ids.append(token_id)
        if self._stop_strings:
            # The whole text is searched again (not just the tail) because decoding a new token can
            # complete a multi-byte character and so change text that was already decoded.
            text = self._decode(self.token_ids)
            cuts = [i for i in (text.find(s) for s in self._stop_strings) if i >= 0]
            if cuts:
                self.stopped_text = text[: min(cuts)]
                self.finish_reason = "stop"

    def result(self) -> GenerationChoice:
        if self.finish_reason is None:
            return GenerationChoice(text=self._decode(self.token_ids), finish_reason="length")
        text = self.stopped_text if self.stopped_text is not None else self._decode(self.token_ids)
        return GenerationChoice(text=text, finish_reason="stop")


@torch.inference_mode()
def generate_choices(
    model: torch.nn.Module,
    prompt_ids: list[int],
    *,
    n: int,
    max_new_tokens: int,
    sampler: TokenSampler,
    stop_token_ids: Collection[int],
    stop_strings: Sequence[str],
    decode: Callable[[list[int]], str],
) -> tuple[list[GenerationChoice], int]:
    """Generate `n` choices of at most `max_new_tokens` tokens; returns them and the tokens generated.

    Rows that finished early keep riding along in the batch (their new tokens are ignored) until every
    row is done, which keeps the KV cache a plain rectangle.
    """
    choices = [_Choice(stop_strings, decode) for _ in range(n)]
    cache = DynamicCache(config=model.config)
    input_ids = torch.tensor([prompt_ids] * n, dtype=torch.long)
    for _ in range(max_new_tokens):
        # logits_to_keep=1: only the last position's logits are needed (the prompt's would be n×len×vocab).
        logits = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
        next_ids = sampler(logits)
        for choice, token_id in zip(choices, next_ids.tolist(), strict=True):
            if choice.finish_reason is None:
                choice.add(token_id, stop_token_ids)
        if all(choice.finish_reason is not None for choice in choices):
            break
        input_ids = next_ids[:, None]
    return [choice.result() for choice in choices], sum(choice.generated for choice in choices)
