"""Token sequences → the rows of one forward pass: packed several to a row, or one per row, padded.

Packing puts the sequences of a micro-batch into as few rows as they fit in (first-fit decreasing),
instead of padding each to the longest. A row holds at most as many tokens as the longest sequence of
the micro-batch, not `max_seq_len`: with eager or sdpa attention a row's attention costs width², whatever
the mask hides, so wider rows trade a little less padding for much more attention work. Measured on
SmolLM2-135M LoRA (CPU, 8 chat examples of 60-80 tokens): rows of up to max_seq_len put all 8 into one
row of ~530 tokens and trained at 0.63× the speed of one example per row. Rows no wider than the longest
example cost at most what padding costs, and when no two sequences share a row the rows are built
exactly as unpacked ones (so packing then changes nothing at all). With a variable-length attention kernel
(flash-attention's varlen, or flex attention with a block mask: `attention.py`, on CUDA) a row's attention
costs the sum of its sequences' squares instead, so there the whole micro-batch goes in one row, end to end,
without any padding (`one_row`).

In a shared row the model must treat every sequence as if it were alone: positions restart at 0 for
each one, and attention must not cross from one to another. Both follow from the position ids alone:
with no 2D attention mask, transformers 5 (checked: 5.17 and 5.24) reads a restart of the positions as a
new sequence and builds a block-diagonal causal mask for eager and sdpa attention; the variable-length
kernels get the sequences' boundaries (`Rows.segments`) or a block mask instead (`attention.py`). Older code
or custom models may ignore that, so `forward.check_model` tries it on the model before training and the
recipe packs only where the packed forward equals the unpacked one.

Targets come already shifted: `targets[r, t]` is the token that position t must predict (the next token
of the same sequence), or IGNORE_INDEX. So the last token of one sequence never predicts the first
token of the next, and padding predicts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

IGNORE_INDEX = -100


class TokenSequence(Protocol):
    """One sequence to run through the model (a `data.TokenizedExample`, say): tokens, and which are targets."""

    @property
    def input_ids(self) -> Sequence[int]: ...

    @property
    def target_mask(self) -> Sequence[bool]:
        """True where the token is a target (predicted from the tokens before it); index 0 never counts."""
        ...


@dataclass(frozen=True)
class Tokens:
    """The plainest `TokenSequence`."""

    input_ids: Sequence[int]
    target_mask: Sequence[bool]


@dataclass
class Rows:
    """The tensors of one forward pass over `n_sequences` sequences (all [rows, width])."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor | None
    """Restarting per sequence when packed; None when unpacked (the model counts 0, 1, 2, ...)."""
    attention_mask: torch.Tensor | None
    """1 for tokens and 0 for padding when unpacked; None when packed (the position ids say it all)."""
    targets: torch.Tensor
    """The token each position must predict, IGNORE_INDEX where nothing is learned."""
    sequence_index: torch.Tensor
    """Which input sequence each position belongs to (-1 for padding)."""
    n_sequences: int
    segments: tuple[int, ...] = ()
    """Packed: the length of each run of restarting positions, row after row (a row's padding is one run), so a
    variable-length kernel can find each sequence in the flattened rows. Empty when unpacked."""

    def to(self, device: torch.device) -> Rows:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Rows(
            self.input_ids.to(device, non_blocking=True),
            move(self.position_ids),
            move(self.attention_mask),
            self.targets.to(device, non_blocking=True),
            self.sequence_index.to(device, non_blocking=True),
            self.n_sequences,
            self.segments,
        )


def layout(lengths: Sequence[int], capacity: int, *, packed: bool) -> list[list[int]]:
    """Which sequences go in which row: first-fit decreasing into rows of `capacity` tokens, or one per row.

    Deterministic (ties keep input order), so a resumed run builds the very same rows.
    """
    if not packed:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def build_rows(sequences: Sequence[TokenSequence], pad_id: int, *, packed: bool, one_row: bool = False) -> Rows:
    """Lay `sequences` out in rows no wider than the longest of them (see `layout`), right-padded; or, packed
    with `one_row` (for variable-length attention), all in one row, longest first, without padding."""
    lengths = [len(s.input_ids) for s in sequences]
    rows = layout(lengths, sum(lengths) if one_row else max(lengths), packed=packed)
    packed = any(len(row) > 1 for row in rows)  # else the plain padded layout, exactly as unpacked
    width = max(sum(lengths[i] for i in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    targets = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    sequence_index = torch.full(shape, -1, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    segments: list[int] = []
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            seq, n = sequences[i], lengths[i]
            ids = torch.tensor(seq.input_ids, dtype=torch.long)
            is_target = torch.tensor(seq.target_mask[1:], dtype=torch.bool)
            input_ids[r, start : start + n] = ids
            targets[r, start : start + n - 1] = torch.where(is_target, ids[1:], IGNORE_INDEX)
            sequence_index[r, start : start + n] = i
            position_ids[r, start : start + n] = torch.arange(n)
            attention_mask[r, start : start + n] = 1
            segments.append(n)
            start += n
        # Padding forms one more "sequence" of its own, so no query row is left with nothing to attend to.
        position_ids[r, start:] = torch.arange(width - start)
        if start < width:
            segments.append(width - start)
    if packed:
        return Rows(input_ids, position_ids, None, targets, sequence_index, len(sequences), tuple(segments))
    return Rows(input_ids, None, attention_mask, targets, sequence_index, len(sequences))
