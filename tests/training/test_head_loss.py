"""The chunked LM head and log-softmax: the plain path's numbers and gradients, without its [tokens × vocab]
tensor, bit-identical run to run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from openft.training.head_loss import chunked_target_logprobs

N, VOCAB, DIM = 37, 301, 24  # not multiples of the chunk sizes below
CHUNKS = {"chunk_tokens": 8, "chunk_vocab": 64}


def inputs(bias: bool = False, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(N, DIM, generator=gen, requires_grad=True)
    weight = torch.randn(VOCAB, DIM, generator=gen, requires_grad=True)
    b = torch.randn(VOCAB, generator=gen, requires_grad=True) if bias else None
    targets = torch.randint(0, VOCAB, (N,), generator=gen)
    targets[0], targets[1] = 0, VOCAB - 1  # the first and the last column of the vocabulary
    return h, weight, b, targets


def plain(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor) -> Any:
    """What `score_targets` did before: the whole logits tensor, upcast to fp32."""
    logits = F.linear(h, weight, bias).float()
    return -F.cross_entropy(logits, targets, reduction="none"), logits.detach().argmax(dim=-1) == targets


def scores_and_grads(fn: Any, bf16: bool, bias: bool = False) -> tuple[torch.Tensor, ...]:
    h, weight, b, targets = inputs(bias)
    upstream = torch.linspace(-1.0, 2.0, N)  # per-token weights, as DPO's per-sequence sums give
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logprobs, correct = fn(h, weight, b, targets)
    params = (h, weight) if b is None else (h, weight, b)
    grads = torch.autograd.grad((logprobs * upstream).sum(), params)
    return (logprobs.detach(), correct, *grads)


def chunked(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor) -> Any:
    return chunked_target_logprobs(h, weight, bias, targets, **CHUNKS)


@pytest.mark.parametrize("bias", [False, True])
def test_fp32_equals_the_plain_path(bias: bool) -> None:
    got = scores_and_grads(chunked, bf16=False, bias=bias)
    want = scores_and_grads(plain, bf16=False, bias=bias)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    assert torch.equal(got[1], want[1])
    for g, w in zip(got[2:], want[2:], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_equals_the_plain_path_to_bf16_rounding() -> None:
    got = scores_and_grads(chunked, bf16=True)
    want = scores_and_grads(plain, bf16=True)
    # Same bf16 matrix products, same fp32 softmax: the log-probabilities agree to fp32 rounding.
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    assert torch.equal(got[1], want[1])
    # The gradients: the plain path rounds the whole product to bf16, the chunks add up in fp32.
    for g, w in zip(got[2:], want[2:], strict=True):
        assert g.dtype == w.dtype == torch.float32
        assert (g - w).abs().max() <= 1e-2 * w.abs().max()


def test_tied_weights_get_both_gradients() -> None:
    """A head tied to the input embeddings: its weight's gradient sums the embedding's and the head's."""
    h, weight, _, targets = inputs()
    tokens = torch.arange(N) % VOCAB

    def grad(fn: Any) -> torch.Tensor:
        embedded = F.embedding(tokens, weight)
        logprobs, _ = fn(h + embedded, weight, None, targets)
        (g,) = torch.autograd.grad(logprobs.sum(), (weight,))
        return g

    torch.testing.assert_close(grad(chunked), grad(plain), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bf16", [False, True])
def test_a_frozen_head_gets_no_gradient(bf16: bool) -> None:
    """LoRA's case: d logprob / d h comes from the forward, the backward only scales it."""

    def grad_h(fn: Any) -> tuple[torch.Tensor, torch.Tensor]:
        h, weight, _, targets = inputs()
        weight.requires_grad_(False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logprobs, _ = fn(h, weight, None, targets)
        (logprobs * torch.linspace(-1.0, 2.0, N)).sum().backward()
        assert weight.grad is None and h.grad is not None
        return logprobs.detach(), h.grad

    got, want = grad_h(chunked), grad_h(plain)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-5)
    if bf16:
        assert (got[1] - want[1]).abs().max() <= 1e-2 * want[1].abs().max()
    else:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(grad_h(chunked)[1], got[1])  # bit-identical run to run


@pytest.mark.parametrize("bf16", [False, True])
def test_two_runs_are_bit_identical(bf16: bool) -> None:
    first = scores_and_grads(chunked, bf16=bf16)
    second = scores_and_grads(chunked, bf16=bf16)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation returns (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


@pytest.mark.parametrize("frozen", [False, True], ids=["trained-head", "frozen-head"])
@pytest.mark.parametrize("fn", [chunked, plain], ids=["chunked", "plain"])
def test_no_tensor_as_large_as_tokens_by_vocab(fn: Any, frozen: bool) -> None:
    # Few dimensions, so that tokens × vocab (11,137) is far larger than the weight (301 × 4) or a chunk (8 × 64).
    gen = torch.Generator().manual_seed(1)
    h = torch.randn(N, 4, generator=gen, requires_grad=True)
    weight = torch.randn(VOCAB, 4, generator=gen, requires_grad=not frozen)
    targets = torch.randint(0, VOCAB, (N,), generator=gen)
    bound = max(CHUNKS["chunk_tokens"] * CHUNKS["chunk_vocab"], weight.numel(), h.numel())
    with LargestTensor() as largest:
        logprobs, _ = fn(h, weight, None, targets)
        logprobs.sum().backward()
    if fn is plain:  # the measurement sees the plain path's logits, so the check below can fail
        assert largest.numel == N * VOCAB
    else:
        assert largest.numel <= bound < N * VOCAB
