"""TokenSampler and the nucleus filter, on hand-made logits."""

from __future__ import annotations

import math

import pytest
import torch

from openft.inference.sampling import TokenSampler, apply_penalties, top_p_filter

PROBS = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
LOGITS = PROBS.log()


def test_temperature_zero_takes_the_argmax_of_each_row() -> None:
    sampler = TokenSampler(temperature=0, top_p=1.0, seed=None)
    assert sampler(LOGITS).tolist() == [0, 2]


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(1.0, [0, 1, 2]), (0.81, [0, 1, 2]), (0.8, [0, 1]), (0.6, [0, 1]), (0.5, [0]), (1e-9, [0])],
)
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p: float, kept: list[int]) -> None:
    filtered = top_p_filter(LOGITS[:1], top_p)[0]
    assert [i for i in range(3) if math.isfinite(filtered[i])] == kept
    assert torch.equal(filtered[kept], LOGITS[0, kept])  # survivors keep their logits


def test_top_p_filter_handles_unsorted_rows_independently() -> None:
    filtered = top_p_filter(LOGITS, 0.7)
    assert torch.isfinite(filtered).tolist() == [[True, True, False], [False, False, True]]


def test_seeded_sampler_is_reproducible_and_follows_the_distribution() -> None:
    logits = LOGITS[:1].expand(4000, 3)
    first = TokenSampler(temperature=1.0, top_p=1.0, seed=42)(logits)
    again = TokenSampler(temperature=1.0, top_p=1.0, seed=42)(logits)
    assert torch.equal(first, again)
    frequencies = torch.bincount(first, minlength=3).float() / len(first)
    assert torch.allclose(frequencies, PROBS[0], atol=0.03)


def test_low_temperature_sharpens_and_top_p_restricts() -> None:
    logits = LOGITS[:1].expand(2000, 3)
    cold = TokenSampler(temperature=0.1, top_p=1.0, seed=1)(logits)
    assert (cold == 0).float().mean() > 0.95
    nucleus = TokenSampler(temperature=1.0, top_p=0.6, seed=1)(logits)
    assert set(nucleus.tolist()) == {0, 1}


def test_unseeded_samplers_differ() -> None:
    logits = LOGITS[:1].expand(64, 3)
    a = TokenSampler(temperature=1.0, top_p=1.0, seed=None)(logits)
    b = TokenSampler(temperature=1.0, top_p=1.0, seed=None)(logits)
    assert not torch.equal(a, b)


def test_penalties_subtract_presence_once_and_frequency_per_count() -> None:
    logits = torch.zeros((2, 4))
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0], [2.0, 0.0, 0.0, 0.0]])
    penalized = apply_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert penalized.tolist() == [[0.0, -0.75, -1.25, 0.0], [-1.0, 0.0, 0.0, 0.0]]
    assert apply_penalties(logits, counts, presence=-1.0, frequency=0.0)[0].tolist() == [0.0, 1.0, 1.0, 0.0]


def test_ranked_is_argsort_when_greedy_and_a_sample_order_otherwise() -> None:
    row = LOGITS[0]
    assert TokenSampler(temperature=0, top_p=1.0, seed=None).ranked(row).tolist() == [0, 1, 2]
    sampler = TokenSampler(temperature=1.0, top_p=1.0, seed=3)
    firsts = torch.tensor([int(sampler.ranked(row)[0]) for _ in range(3000)])
    assert torch.allclose(torch.bincount(firsts, minlength=3).float() / 3000, PROBS[0], atol=0.03)
    # Gumbel-max: the first of a subset in this order is a sample from the distribution restricted to it.
    seconds = torch.tensor([next(t for t in sampler.ranked(row).tolist() if t != 0) for _ in range(3000)])
    assert torch.allclose(torch.bincount(seconds, minlength=3).float()[1:] / 3000, torch.tensor([0.6, 0.4]), atol=0.03)


def test_ranked_puts_tokens_outside_the_nucleus_last_in_logit_order() -> None:
    row = torch.tensor([0.1, 0.2, 0.05, 0.3, 0.35]).log()
    order = TokenSampler(temperature=1.0, top_p=0.5, seed=1).ranked(row).tolist()
    assert sorted(order[:2]) == [3, 4] and order[2:] == [1, 0, 2]
