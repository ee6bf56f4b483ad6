"""The LM head and the log-softmax of the target tokens, in chunks: no [tokens × vocab] tensor at any time.

Applying the head to N target positions gives N × V logits (V = 151,936 for Qwen2.5), which the loss upcasts
to fp32: 4,096 targets make a 2.5 GB tensor, kept for the backward, plus its gradient of the same size.
`chunked_target_logprobs` computes the same per-target `logit[target] - logsumexp(logits)` and argmax hit
`chunk_tokens` targets and `chunk_vocab` vocabulary entries at a time, with an online max and logsumexp over
the vocabulary chunks, so the largest temporary is chunk_tokens × chunk_vocab. Its backward recomputes each
chunk's logits from the saved hidden states and head weight (the price: one more head matrix product) and
accumulates the gradient of the hidden states, and of the head weight only when that is trained (full
fine-tuning). With LoRA the head is frozen, and each target's log-probability depends on its own hidden
state only, so the forward also accumulates d logprob / d h = W[target] - softmax @ W (online, rescaled as
the running max grows) and the backward only scales it: as many matrix products as the plain path.

Numerics follow the plain path (`F.linear(h, W).float()` then `F.cross_entropy`): the matrix products run in
the compute dtype (bf16 under autocast, where autocast would have cast h and W), each chunk's logits are
upcast to fp32 before the softmax, and gradients are accumulated in fp32. The chunk loops run in a fixed
order with no atomics, so the same inputs give bit-identical results run to run (exact pause/resume compares
losses and weights bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 1024
"""Targets per chunk."""
CHUNK_VOCAB = 16384
"""Vocabulary entries per chunk: with CHUNK_TOKENS, a 64 MB fp32 logits chunk at most."""


def compute_dtype(h: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype `F.linear(h, weight)` would compute in here: the autocast dtype if autocast is on, else W's."""
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type) and weight.is_floating_point():
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def chunked_target_logprobs(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk_tokens: int = CHUNK_TOKENS,
    chunk_vocab: int = CHUNK_VOCAB,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) (fp32, differentiable in h, weight, bias) and argmax == target (bool), per row of `h`.

    `h` is [N, d], `weight` [V, d] (an `nn.Linear`'s), `bias` [V] or None, `targets` [N] in [0, V).
    """
    if chunk_tokens < 1 or chunk_vocab < 1:
        raise ValueError("chunk sizes must be positive")
    frozen_head = not weight.requires_grad and (bias is None or not bias.requires_grad)
    jacobian = frozen_head and h.requires_grad and torch.is_grad_enabled()
    logprobs, correct = _ChunkedTargetLogprobs.apply(
        h, weight, bias, targets, compute_dtype(h, weight), chunk_tokens, chunk_vocab, jacobian
    )
    return logprobs, correct


def _chunk_logits(h_low: torch.Tensor, w_low: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One chunk's logits in fp32 from h and W already in the compute dtype, as autocast's `F.linear` gives."""
    return F.linear(h_low, w_low, None if bias is None else bias.to(h_low.dtype)).float()


def _target_column(targets: torch.Tensor, start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets fall in vocabulary columns [start, start + width), and their column there (clamped)."""
    inside = (targets >= start) & (targets < start + width)
    return inside, (targets - start).clamp(0, width - 1).unsqueeze(1)


class _ChunkedTargetLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        dtype: torch.dtype,
        chunk_tokens: int,
        chunk_vocab: int,
        jacobian: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, vocab = h.shape[0], weight.shape[0]
        # d logprob / d h per target, when the head is frozen (see the module docstring); else unused
        dlogprob_dh = torch.empty(h.shape if jacobian else (0,), dtype=torch.float32, device=h.device)
        logprobs = torch.empty(n, dtype=torch.float32, device=h.device)
        correct = torch.empty(n, dtype=torch.bool, device=h.device)
        lse = torch.empty(n, dtype=torch.float32, device=h.device)
        with torch.autocast(h.device.type, enabled=False):
            for t0 in range(0, n, chunk_tokens):
                h_low, t_c = h[t0 : t0 + chunk_tokens].to(dtype), targets[t0 : t0 + chunk_tokens]
                rows = h_low.shape[0]
                running_max = torch.full((rows,), float("-inf"), device=h.device)
                running_sum = torch.zeros(rows, device=h.device)
                best = torch.full((rows,), float("-inf"), device=h.device)
                best_index = torch.zeros(rows, dtype=torch.long, device=h.device)
                target_logit = torch.zeros(rows, device=h.device)
                weighted = torch.zeros((rows, h.shape[1]) if jacobian else (0,), device=h.device)
                for v0 in range(0, vocab, chunk_vocab):
                    b_c = None if bias is None else bias[v0 : v0 + chunk_vocab]
                    w_low = weight[v0 : v0 + chunk_vocab].to(dtype)
                    logits = _chunk_logits(h_low, w_low, b_c)
                    chunk_max, chunk_arg = logits.max(dim=1)
                    # strictly greater: on ties the first index wins, as in argmax over the whole row
                    better = chunk_max > best
                    best = torch.where(better, chunk_max, best)
                    best_index = torch.where(better, chunk_arg + v0, best_index)
                    inside, column = _target_column(t_c, v0, logits.shape[1])
                    target_logit = torch.where(inside, logits.gather(1, column).squeeze(1), target_logit)
                    new_max = torch.maximum(running_max, chunk_max)
                    rescale = torch.exp(running_max - new_max)
                    unnormalised = logits.sub_(new_max.unsqueeze(1)).exp_()  # in place: logits are done
                    running_sum = running_sum * rescale + unnormalised.sum(dim=1)
                    running_max = new_max
                    if jacobian:  # sum_v exp(logit_v - max) W_v, rescaled like running_sum
                        weighted = weighted * rescale.unsqueeze(1) + (unnormalised.to(dtype) @ w_low).float()
                chunk_lse = running_max + torch.log(running_sum)
                lse[t0 : t0 + rows] = chunk_lse
                logprobs[t0 : t0 + rows] = target_logit - chunk_lse
                correct[t0 : t0 + rows] = best_index == t_c
                if jacobian:
                    at_target = weight[t_c].to(dtype).float()
                    dlogprob_dh[t0 : t0 + rows] = at_target - weighted / running_sum.unsqueeze(1)
        if jacobian:
            ctx.save_for_backward(dlogprob_dh)
        else:
            ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.jacobian, ctx.h_dtype = jacobian, h.dtype
        ctx.dtype, ctx.chunk_tokens, ctx.chunk_vocab = dtype, chunk_tokens, chunk_vocab
        ctx.mark_non_differentiable(correct)
        return logprobs, correct

    @staticmethod
    def backward(
        ctx: Any, grad_logprobs: torch.Tensor, _grad_correct: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        if ctx.jacobian:
            (dlogprob_dh,) = ctx.saved_tensors
            grad_h = grad_logprobs.float().unsqueeze(1) * dlogprob_dh
            return (grad_h.to(ctx.h_dtype), None, None, None, None, None, None, None)
        h, weight, bias, targets, lse = ctx.saved_tensors
        dtype, chunk_tokens, chunk_vocab = ctx.dtype, ctx.chunk_tokens, ctx.chunk_vocab
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        n, vocab = h.shape[0], weight.shape[0]
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=torch.float32, device=h.device) if need_b else None
        grad_logprobs = grad_logprobs.float()
        with torch.autocast(h.device.type, enabled=False):
            for t0 in range(0, n, chunk_tokens):
                h_low, t_c = h[t0 : t0 + chunk_tokens].to(dtype), targets[t0 : t0 + chunk_tokens]
                g_c, lse_c = grad_logprobs[t0 : t0 + chunk_tokens], lse[t0 : t0 + chunk_tokens]
                for v0 in range(0, vocab, chunk_vocab):
                    w_low = weight[v0 : v0 + chunk_vocab].to(dtype)
                    b_c = None if bias is None else bias[v0 : v0 + chunk_vocab]
                    logits = _chunk_logits(h_low, w_low, b_c)
                    # d logprob / d logit_v = [v == target] - softmax_v
                    grad_logits = torch.exp(logits - lse_c.unsqueeze(1)).mul_(-g_c.unsqueeze(1))
                    inside, column = _target_column(t_c, v0, logits.shape[1])
                    at_target = grad_logits.gather(1, column) + torch.where(inside, g_c, 0.0).unsqueeze(1)
                    grad_logits.scatter_(1, column, at_target)
                    grad_low = grad_logits.to(dtype)
                    if grad_h is not None:
                        grad_h[t0 : t0 + chunk_tokens] += (grad_low @ w_low).float()
                    if grad_w is not None:
                        grad_w[v0 : v0 + chunk_vocab] += (grad_low.T @ h_low).float()
                    if grad_b is not None:
                        grad_b[v0 : v0 + chunk_vocab] += grad_logits.sum(dim=0)
        return (
            None if grad_h is None else grad_h.to(h.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )
