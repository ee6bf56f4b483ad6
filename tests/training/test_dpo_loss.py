"""The DPO loss math against hand computations, and one end-to-end check that it teaches a preference."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.training.dpo_loss import dpo_loss, sequence_logprobs


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_values_match_a_hand_computation() -> None:
    policy_c, policy_r, ref_c, ref_r, beta = _t(-3.0, -5.0), _t(-4.0, -2.0), _t(-3.5, -4.0), _t(-3.5, -3.0), 0.5
    out = dpo_loss(policy_c, policy_r, ref_c, ref_r, beta)
    # pair 1: β·((−3 − −4) − (−3.5 − −3.5)) = 0.5;  pair 2: β·((−5 − −2) − (−4 − −3)) = −1
    losses = [math.log1p(math.exp(-0.5)), math.log1p(math.exp(1.0))]  # −log σ(z) = log(1 + e^−z)
    assert out.loss.item() == pytest.approx(sum(losses) / 2, rel=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.25, -0.5])  # β·(π − ref) of the preferred answers
    assert out.rejected_rewards.tolist() == pytest.approx([-0.25, 0.5])
    assert out.reward_margin.item() == pytest.approx(((0.25 + 0.25) + (-0.5 - 0.5)) / 2)
    assert out.accuracy.item() == 0.5


def test_loss_is_log_2_when_policy_equals_reference() -> None:
    logps = torch.randn(4, dtype=torch.float64) * 10
    other = torch.randn(4, dtype=torch.float64) * 10
    out = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.1)
    assert out.loss.item() == pytest.approx(math.log(2), rel=1e-12)
    assert out.reward_margin.item() == 0 and out.accuracy.item() == 0  # ties are not wins


def test_large_margins_stay_finite() -> None:
    out = dpo_loss(_t(0.0, -1e4), _t(-1e4, 0.0), _t(0.0, 0.0), _t(0.0, 0.0), beta=1.0)
    assert torch.isfinite(out.loss)
    assert out.loss.item() == pytest.approx(1e4 / 2)  # one pair ≈ 0, the other ≈ its margin


def test_gradient_pushes_chosen_up_and_rejected_down() -> None:
    policy_c = torch.tensor([-4.0, -2.0], requires_grad=True)
    policy_r = torch.tensor([-3.0, -6.0], requires_grad=True)
    ref_c = torch.tensor([-4.0, -2.0], requires_grad=True)
    out = dpo_loss(policy_c, policy_r, ref_c, torch.tensor([-3.0, -6.0]), beta=0.1)
    out.loss.backward()
    assert policy_c.grad is not None and policy_r.grad is not None
    assert (policy_c.grad < 0).all()  # descending the loss raises the preferred answer's log-prob ...
    assert (policy_r.grad > 0).all()  # ... and lowers the other's
    assert ref_c.grad is None  # the reference is a constant
    assert not out.chosen_rewards.requires_grad


def test_sequence_logprobs_is_a_shifted_masked_gather() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    labels = torch.tensor([[-100, -100, 3, 1, 6], [-100, 2, 4, -100, -100]])  # prompt and padding masked
    logps = torch.log_softmax(logits, dim=-1)
    expected = [
        logps[0, 1, 3] + logps[0, 2, 1] + logps[0, 3, 6],  # logits at t predict the label at t + 1
        logps[1, 0, 2] + logps[1, 1, 4],
    ]
    assert sequence_logprobs(logits, labels).tolist() == pytest.approx([e.item() for e in expected], rel=1e-12)
    assert sequence_logprobs(logits, torch.full_like(labels, -100)).tolist() == [0.0, 0.0]
    low = sequence_logprobs(logits.to(torch.bfloat16), labels)  # row-by-row float32 path
    assert low.dtype == torch.float32
    assert low.tolist() == pytest.approx([e.item() for e in expected], abs=0.1)
    with pytest.raises(ValueError, match="do not match"):
        sequence_logprobs(logits, labels[:, :4])


# Behaviour: DPO with a LoRA policy and the same model (adapters off) as the reference ------------------

_PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is 12."),
    ("Hello!", "Hello! How can I help you today?", "No."),
    ("Tell me about the kettle.", "The Zorblax kettle boils water in 90 seconds.", "The dog is lazy."),
    ("Count to five.", "0 1 2 3 4 5", "5 4 3 2 1 0"),
    ("Yes or no?", "Answer: yes.", "Answer: no."),
    ("Say no.", "Answer: no.", "Answer: yes."),
    ("How much does the kettle cost?", "It costs 49 euros.", "It costs 1000 euros."),
    ("Weather in Paris?", '{"name": "get_weather", "arguments": {"city": "Paris"}}', "I am a fox."),
]


def _batch(tokenizer: Any, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded rows prompt + answer, labels only on the answer (and its end-of-turn token)."""
    rows, labels = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        messages = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt_ids, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels]),
    }


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a small shared CPU, two threads on a model this tiny run ~8x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_dpo_steps_with_lora_raise_the_preferred_answers(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"))
    prompts = [p for p, _, _ in _PAIRS]
    # chosen and rejected in one forward pass: rows [0, n) are preferred, [n, 2n) the others
    batch = _batch(tokenizer, prompts * 2, [c for _, c, _ in _PAIRS] + [r for _, _, r in _PAIRS])
    n = len(_PAIRS)

    def logps() -> torch.Tensor:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return sequence_logprobs(logits, batch["labels"])

    def reference() -> torch.Tensor:
        with torch.no_grad(), model.disable_adapter():  # the same weights without the adapter: no second copy
            return logps()

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    ref = reference()  # constant: the base never changes, only the adapter trains (checked at the end)
    history = []
    for _ in range(30):
        policy = logps()
        out = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], beta=0.1)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append(out)

    assert torch.equal(reference(), ref)  # disabling the adapter really gives the untouched base
    first, last = history[0], history[-1]
    assert first.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts as the identity
    assert first.reward_margin.item() == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        policy = logps()
    margin = (policy[:n] - ref[:n]) - (policy[n:] - ref[n:])  # after the last step
    assert margin.mean().item() > 1.0 and (margin > 0).all(), margin
    assert last.accuracy.item() == 1.0
    assert last.reward_margin.item() > first.reward_margin.item()
    assert last.loss.item() < first.loss.item() - 0.2
