"""Packing and the forward pass: rows, restarting positions, per-example losses equal to unpacked ones,
the LM head at target positions only, and the check that decides which of these a model gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from openft.training.dpo_loss import sequence_logprobs
from openft.training.forward import ModelSupport, check_model, score_targets
from openft.training.packing import IGNORE_INDEX, Tokens, build_rows, layout
from openft.training.precision import resolve_precision


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    loaded.eval()
    return loaded


def sequences(lengths: list[int], vocab: int = 500) -> list[Tokens]:
    """Sequences of these lengths whose second half is the target."""
    out = []
    for n, length in enumerate(lengths):
        ids = [(13 * n + 7 * i + 3) % vocab for i in range(length)]
        out.append(Tokens(ids, [i >= length // 2 for i in range(length)]))
    return out


def test_layout_packs_first_fit_decreasing_within_capacity() -> None:
    lengths = [5, 9, 3, 7, 2, 4]
    rows = layout(lengths, 10, packed=True)
    assert rows == [[1], [3, 2], [0, 5], [4]]  # 9 | 7+3 | 5+4 | 2 : longest first, each into the first that fits
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
    assert layout(lengths, 10, packed=False) == [[0], [1], [2], [3], [4], [5]]


def test_packed_rows_restart_positions_and_never_predict_across_examples() -> None:
    a = Tokens([1, 2, 3, 4], [False, False, True, True])
    b = Tokens([5, 6, 7], [False, True, True])
    c = Tokens([8, 9, 10, 11, 12, 13, 14], [True] * 7)
    rows = build_rows([a, b, c], pad_id=0, packed=True)  # rows as wide as the longest sequence: [c], [a, b]
    assert rows.attention_mask is None and rows.input_ids.tolist() == [
        [8, 9, 10, 11, 12, 13, 14],
        [1, 2, 3, 4, 5, 6, 7],
    ]
    assert rows.position_ids is not None and rows.position_ids.tolist()[1] == [0, 1, 2, 3, 0, 1, 2]
    # Position t predicts token t+1 of its own sequence; a's last token does not predict b's first.
    ignore = IGNORE_INDEX
    assert rows.targets.tolist()[1] == [ignore, 3, 4, ignore, 6, 7, ignore]
    assert rows.sequence_index.tolist() == [[2] * 7, [0, 0, 0, 0, 1, 1, 1]]

    padded = build_rows([a, c, Tokens([5, 6], [False, True])], pad_id=0, packed=True)
    assert padded.input_ids.tolist() == [[8, 9, 10, 11, 12, 13, 14], [1, 2, 3, 4, 5, 6, 0]]
    assert padded.position_ids is not None and padded.position_ids.tolist()[1] == [0, 1, 2, 3, 0, 1, 0]
    assert padded.sequence_index.tolist()[1] == [0, 0, 0, 0, 2, 2, -1]
    unpacked = build_rows([a, b], pad_id=0, packed=False)
    assert unpacked.position_ids is None and unpacked.attention_mask is not None
    assert unpacked.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert unpacked.sequence_index.tolist() == [[0, 0, 0, 0], [1, 1, 1, -1]]
    assert unpacked.targets.tolist() == [[ignore, 3, 4, ignore], [6, 7, ignore, ignore]]


def test_packed_per_example_losses_equal_unpacked(model: Any) -> None:
    """The promise of packing: every example's loss as if it had a row of its own (fp32, within rounding)."""
    seqs = sequences([17, 5, 30, 12, 9, 26, 4])
    packed_rows = build_rows(seqs, pad_id=0, packed=True)
    assert packed_rows.input_ids.shape[0] < len(seqs)  # it did pack
    with torch.no_grad():
        packed = score_targets(model, packed_rows, split_head=True)
        unpacked = score_targets(model, build_rows(seqs, pad_id=0, packed=False), split_head=False)
    torch.testing.assert_close(
        packed.per_sequence(packed.logprobs), unpacked.per_sequence(unpacked.logprobs), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(packed.per_sequence(packed.correct.long()), unpacked.per_sequence(unpacked.correct.long()))
    assert packed.logprobs.shape[0] == sum(sum(s.target_mask[1:]) for s in seqs)


def test_the_head_at_target_positions_gives_the_models_own_log_probs(model: Any) -> None:
    rows = build_rows(sequences([11, 6, 14]), pad_id=0, packed=False)
    with torch.no_grad():
        fast = score_targets(model, rows, split_head=True)
        logits = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask).logits
    # The same numbers as DPO's `sequence_logprobs` over the full logits (labels unshifted, as models take them).
    labels = torch.full_like(rows.targets, IGNORE_INDEX)
    labels[:, 1:] = rows.targets[:, :-1]
    torch.testing.assert_close(fast.per_sequence(fast.logprobs), sequence_logprobs(logits, labels))


def test_check_model_finds_both_fast_paths(model: Any) -> None:
    assert check_model(model, pad_id=0, device=torch.device("cpu")) == ModelSupport(split_head=True, packing=True)
    assert not model.training  # it left the mode as it found it


def test_check_model_refuses_packing_where_attention_would_cross_examples(
    model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As with transformers before packed-sequence masks: the position ids alone no longer separate examples."""
    import transformers.masking_utils

    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    assert check_model(model, pad_id=0, device=torch.device("cpu")) == ModelSupport(split_head=True, packing=False)


def test_check_model_keeps_the_full_head_for_models_that_change_logits_after_it(model: Any) -> None:
    class Scaled(torch.nn.Module):
        """A model whose forward scales the logits (as Cohere's and Gemma's do): the head alone is not enough."""

        def __init__(self, inner: Any):
            super().__init__()
            self.inner = inner

        def get_base_model(self) -> Any:
            return self.inner

        def forward(self, **inputs: Any) -> Any:
            out = self.inner(**inputs)
            out.logits = out.logits * 0.5
            return out

    assert check_model(Scaled(model), pad_id=0, device=torch.device("cpu")).split_head is False


def test_precision_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("fp32", cuda) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
