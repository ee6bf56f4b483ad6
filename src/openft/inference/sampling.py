"""Next-token choice: penalties, then greedy or temperature + nucleus (top-p) sampling from a private RNG."""

from __future__ import annotations

import torch


class TokenSampler:
    """Picks one token per row of a `(batch, vocab)` logits tensor.

    Sampling draws from this sampler's own `torch.Generator`, never the global RNG: a seeded request is
    reproducible even while other requests sample concurrently, and it does not shift their draws.
    """

    def __init__(self, *, temperature: float, top_p: float, seed: int | None):
        self._temperature = temperature
        self._top_p = top_p
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()  # fresh entropy from the OS
        else:
            self._generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Return the chosen token ids, shape `(batch,)`."""
        if self._temperature == 0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(self._filtered(logits), dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self._generator).squeeze(-1)

    def ranked(self, logits: torch.Tensor) -> torch.Tensor:
        """Every token id of one `(vocab,)` row, in the order this sampler would pick them without replacement.

        For constrained decoding: the first acceptable id in this order is a greedy pick (temperature 0)
        or an exact sample from the distribution restricted to acceptable tokens (Gumbel-max: adding
        Gumbel noise to the logits and sorting draws without replacement). Tokens outside the nucleus
        come after all those inside it, in logit order, so a constraint can still fall back on them.
        """
        if self._temperature == 0:
            return logits.argsort(descending=True)
        filtered = self._filtered(logits[None])[0]
        uniform = torch.rand(filtered.shape, generator=self._generator).clamp_(min=1e-20)
        keys = filtered - torch.log(-torch.log(uniform))
        inside = keys.argsort(descending=True)[: int(torch.isfinite(filtered).sum())]
        outside = torch.isinf(filtered).nonzero().squeeze(-1)
        return torch.cat([inside, outside[logits[outside].argsort(descending=True)]])

    def _filtered(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float() / self._temperature
        return top_p_filter(logits, self._top_p) if self._top_p < 1 else logits


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) every token outside the smallest set whose probability mass reaches `top_p`.

    A token is kept when the mass of the more likely tokens before it is still below `top_p`, so the
    most likely token always survives.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor, *, presence: float, frequency: float) -> torch.Tensor:
    """OpenAI's penalties: `logit[t] -= presence · [count_t > 0] + frequency · count_t`.

    `counts` is `(batch, vocab)`: how often each row has generated each token so far (the prompt does
    not count, as in OpenAI's formula).
    """
    return logits - (presence * (counts > 0).to(logits.dtype) + frequency * counts)
