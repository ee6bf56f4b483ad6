"""One forward pass over `packing.Rows`: the log-probability of every target token, and nothing more.

A causal LM's head turns each position's hidden state into a score for every vocabulary entry (49,152
for SmolLM2, 151,936 for Qwen2.5), and the usual `model(...).logits` does that at *every* position, in
a [rows, width, vocab] tensor that is then upcast to fp32 for the loss. Only target positions (the
assistant's reply, often a third of the tokens or less) enter the loss, so this module runs the
model's body (`get_decoder()`), picks the hidden states of the target positions, and applies the head
(`get_output_embeddings()`) to those alone: the same numbers for the positions that count, without the
head's matrix products, the fp32 logits and their backward for the others. Where the head is a plain
`nn.Linear`, `head_loss` applies it in chunks of tokens and vocabulary, so even the target positions' logits
never exist as one [targets × vocab] fp32 tensor.

Not every model is a plain "body, then a linear head" (some scale or soft-cap their logits after the
head, some ignore position ids when given no attention mask), so `check_model` compares the fast paths
against the model's own forward on a small input before training, and the recipe uses only what agrees.

How packed rows are laid out and described depends on the model's attention kernel (`attention.py`: a dense
mask from restarting position ids on the CPU, sequence boundaries or a flex block mask on CUDA); the kernel
is read off each model as it is run, so a DPO reference copy loaded with another kernel is still fed right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from openft.training import attention
from openft.training.head_loss import chunked_target_logprobs
from openft.training.packing import IGNORE_INDEX, Rows, Tokens, TokenSequence, build_rows
from openft.training.precision import Precision, autocast

CHECK_TOLERANCE = 1e-4
"""Largest log-probability difference (fp32) for a fast path to count as equal to the model's own forward."""


@dataclass
class TargetScores:
    """Per target token (flattened over rows, in row-major order)."""

    logprobs: torch.Tensor
    """log p(target token | the tokens before it), fp32; carries the autograd graph in training."""
    correct: torch.Tensor
    """Whether the target token is also the most likely one (bool)."""
    sequence_index: torch.Tensor
    """The input sequence each target token belongs to."""
    n_sequences: int

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """Sum `values` (one per target token) per input sequence: [n_sequences]."""
        out = torch.zeros(self.n_sequences, dtype=values.dtype, device=values.device)
        return out.index_add(0, self.sequence_index, values)


@dataclass(frozen=True)
class ModelSupport:
    """Which fast paths `check_model` found to give the model's own results."""

    split_head: bool
    """Apply the LM head at target positions only."""
    packing: bool
    """Several sequences per row, kept apart by the model's attention kernel (restarting position ids, and the
    sequences' boundaries or a block mask for a variable-length kernel: `attention.py`)."""


@dataclass(frozen=True)
class ForwardPass:
    """How the recipe runs the model on a micro-batch's sequences: layout, fast paths, device, precision."""

    pad_id: int
    packed: bool
    split_head: bool
    device: torch.device
    precision: Precision

    def __call__(self, model: Any, sequences: Sequence[TokenSequence]) -> TargetScores:
        one_row = attention.kernel_of(causal_lm(model)).one_row
        rows = build_rows(sequences, self.pad_id, packed=self.packed, one_row=one_row).to(self.device)
        with autocast(self.device, self.precision):
            return score_targets(model, rows, split_head=self.split_head)


def causal_lm(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (LoRA layers are injected in place, so they stay in use)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def score_targets(model: Any, rows: Rows, *, split_head: bool) -> TargetScores:
    """Log-probabilities and argmax hits of the target tokens of `rows` (already on the model's device)."""
    is_target = rows.targets != IGNORE_INDEX
    wanted = rows.targets[is_target]
    inputs: dict[str, Any] = {"input_ids": rows.input_ids, "attention_mask": rows.attention_mask, "use_cache": False}
    if rows.position_ids is not None:  # packed: described as the model's attention kernel needs it
        kernel = attention.kernel_of(causal_lm(model))
        inputs.update(attention.packed_inputs(kernel, rows.position_ids, rows.sequence_index, rows.segments))
    if split_head:
        lm = causal_lm(model)
        hidden = lm.get_decoder()(**inputs).last_hidden_state[is_target]
        head = lm.get_output_embeddings()
        if type(head) is torch.nn.Linear:  # exactly `x @ W.T + b`; a subclass may compute something else
            logprobs, correct = chunked_target_logprobs(hidden, head.weight, head.bias, wanted)
            return TargetScores(logprobs, correct, rows.sequence_index[is_target], rows.n_sequences)
        logits = head(hidden)
    else:
        logits = model(**inputs).logits[is_target]
    logits = logits.float()  # the softmax in fp32, also under bf16 autocast
    logprobs = -F.cross_entropy(logits, wanted, reduction="none")
    correct = logits.detach().argmax(dim=-1) == wanted
    return TargetScores(logprobs, correct, rows.sequence_index[is_target], rows.n_sequences)


def _in_sequence_order(scores: TargetScores) -> torch.Tensor:
    """The log-probabilities sequence by sequence (a packed layout may put the sequences in another order)."""
    return scores.logprobs[torch.argsort(scores.sequence_index, stable=True)]


@torch.no_grad()
def check_model(model: Any, pad_id: int, device: torch.device) -> ModelSupport:
    """Try the fast paths on three short sequences and keep those that match `model(...)` (fp32, eval mode).

    Packing is tried in the layout the model's attention kernel gets (`attention.py`). A kernel without fp32
    (flash-attention) cannot be compared at fp32 precision, so the layouts are compared with SDPA in its place,
    and the kernel itself must then show that it keeps the examples apart (`_kernel_keeps_apart`).
    Eval mode and no_grad: nothing is drawn from any random generator, so exact resume is unaffected.
    """
    lm = causal_lm(model)
    kernel = attention.kernel_of(lm)
    sequences = _check_sequences(lm.config.vocab_size, offset=0)
    was_training = model.training
    model.eval()
    try:
        with attention.fp32_attention(lm):
            unpacked = build_rows(sequences, pad_id, packed=False).to(device)
            expected = _in_sequence_order(score_targets(model, unpacked, split_head=False))

            def agrees(rows: Rows, split_head: bool) -> bool:
                try:
                    got = _in_sequence_order(score_targets(model, rows.to(device), split_head=split_head))
                except Exception:  # a model without get_decoder/get_output_embeddings, or one that rejects the input
                    return False
                return got.shape == expected.shape and bool((got - expected).abs().max() <= CHECK_TOLERANCE)

            split_head = agrees(unpacked, split_head=True)
            packed = build_rows(sequences, pad_id, packed=True, one_row=kernel.one_row)  # [7], [4, 3] or [7, 4, 3]
            packing = agrees(packed, split_head=split_head)
        if packing and not kernel.fp32:
            packing = _kernel_keeps_apart(model, kernel, pad_id, device, split_head)
        return ModelSupport(split_head, packing)
    finally:
        model.train(was_training)


def _check_sequences(vocab: int, *, offset: int) -> list[Tokens]:
    """Three short sequences (7, 4 and 3 tokens); `offset` changes the first one's tokens only."""
    return [
        Tokens([(7 * i + 3 + offset) % vocab for i in range(7)], [True] * 7),
        Tokens([(5 * i + 11) % vocab for i in range(4)], [True] * 4),
        Tokens([(3 * i + 5) % vocab for i in range(3)], [True] * 3),
    ]


def _kernel_keeps_apart(
    model: Any, kernel: attention.Kernel, pad_id: int, device: torch.device, split_head: bool
) -> bool:
    """Whether, with `kernel` itself, what the 2nd and 3rd sequences of a packed row get is independent of the 1st.

    Precision-free: every operation but attention works token by token, so with the examples kept apart the
    later sequences' log-probs are computed from the very same numbers whatever the first one holds (to the
    bit, where the kernels are deterministic), while attention that crossed over would carry the change.
    """
    vocab = causal_lm(model).config.vocab_size
    results = []
    for offset in (0, 1):
        rows = build_rows(_check_sequences(vocab, offset=offset), pad_id, packed=True, one_row=kernel.one_row)
        try:
            with attention.kernel_precision(kernel, device):
                scores = score_targets(model, rows.to(device), split_head=split_head)
        except Exception:
            return False
        results.append(scores.logprobs[scores.sequence_index != 0].float())
    first, second = results
    return bool((first - second).abs().max() <= CHECK_TOLERANCE)
