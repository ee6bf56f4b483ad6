"""What a job learns: supervised fine-tuning (SFT), direct preference optimization (DPO) or reinforcement
fine-tuning (GRPO, `rft.py`).

The recipe runs one loop for both (data order, micro-batches, optimizer, checkpoints, stop and resume,
metrics); an objective supplies what differs:

    read / tokenize   the file format (chat examples or preference pairs) → items to train on
    units(item)       what the batch's loss averages over: target tokens (SFT), pairs (DPO) or prompts (RFT)
    n_tokens(item)    tokens fed to the model (for `trained_tokens` and tokens/s)
    sums(...)         a micro-batch's loss and metrics as *sums* over its units
    metrics(...)      sums / the batch's units → the metric columns of `columns`

Sums, not means, so that gradient accumulation is exact: the recipe divides each micro-batch's loss sum
by the units of the whole batch, and the accumulated gradient is that of one big batch however the
batch is split into micro-batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from openft.datasets.chat import read_examples
from openft.datasets.preference import read_preference_examples
from openft.trainer_contract import DPO_RESULT_COLUMNS, RESULT_COLUMNS, DpoSpec, TrainJobSpec
from openft.training.data import PreparedData, TokenizedExample, TokenizedPair, prepare, prepare_pairs
from openft.training.dpo_loss import dpo_loss
from openft.training.forward import ForwardPass
from openft.training.model import LoadedModel, Reference, build_reference
from openft.training.rft import ReinforcementObjective


class Objective(Protocol):
    columns: tuple[str, ...]
    """The result file's columns (`step` first); also the metrics of metrics and checkpoint messages."""

    def read(self, path: Path) -> list[Any]:
        """Parse a data file; raises `DataFormatError` with the line of the first problem."""
        ...

    def tokenize(self, tokenizer: Any, examples: list[Any], *, max_seq_len: int) -> PreparedData[Any]: ...

    def attach(self, loaded: LoadedModel, spec: TrainJobSpec) -> None:
        """Whatever the objective needs from the loaded model (DPO: the reference policy)."""
        ...

    def units(self, item: Any) -> int: ...

    def n_tokens(self, item: Any) -> int: ...

    def sums(self, model: Any, micro: Sequence[Any], forward: ForwardPass) -> dict[str, torch.Tensor]:
        """`loss` (with its graph, in training) and metric sums over the micro-batch's units."""
        ...

    def metrics(self, sums: dict[str, float], units: int, prefix: str) -> dict[str, float]:
        """`prefix` + metric name → value, for the columns of `columns` that have the prefix."""
        ...

    def at_step(self, step: int) -> None:
        """The recipe's step count (steps done) before a step or a validation: what RFT seeds sampling with."""
        ...

    def notes(self) -> list[str]:
        """Warnings since the last call (RFT: answers its grader could not score), for warn events."""
        ...

    def step_tokens(self, batch: Sequence[Any]) -> int:
        """Tokens the step fed the model (`trained_tokens`)."""
        ...


class _FixedData:
    """The default of the hooks that only sampling objectives need."""

    def at_step(self, step: int) -> None:
        pass

    def notes(self) -> list[str]:
        return []

    def step_tokens(self, batch: Sequence[Any]) -> int:
        return sum(self.n_tokens(item) for item in batch)

    def n_tokens(self, item: Any) -> int:
        raise NotImplementedError


def _metrics(columns: tuple[str, ...], sums: dict[str, float], units: int, prefix: str) -> dict[str, float]:
    return {prefix + name: value / units for name, value in sums.items() if prefix + name in columns}


class SupervisedObjective(_FixedData):
    """Next-token cross-entropy on the trainable assistant tokens, averaged over those tokens."""

    columns: tuple[str, ...] = RESULT_COLUMNS

    def read(self, path: Path) -> list[Any]:
        return read_examples(path)

    def tokenize(self, tokenizer: Any, examples: list[Any], *, max_seq_len: int) -> PreparedData[Any]:
        return prepare(tokenizer, examples, max_seq_len=max_seq_len)

    def attach(self, loaded: LoadedModel, spec: TrainJobSpec) -> None:
        pass

    def units(self, item: TokenizedExample) -> int:
        return item.n_targets

    def n_tokens(self, item: TokenizedExample) -> int:
        return len(item.input_ids)

    def sums(self, model: Any, micro: Sequence[TokenizedExample], forward: ForwardPass) -> dict[str, torch.Tensor]:
        scores = forward(model, micro)
        return {"loss": -scores.logprobs.sum(), "mean_token_accuracy": scores.correct.sum()}

    def metrics(self, sums: dict[str, float], units: int, prefix: str) -> dict[str, float]:
        return _metrics(self.columns, sums, units, prefix)


class PreferenceObjective(_FixedData):
    """DPO (`openft.training.dpo_loss`) on pairs, against the reference policy of `model.build_reference`.

    The reference log-probs are computed afresh at every step (one more forward, no backward) rather
    than once up front: nothing extra to store or checkpoint, and a resumed run computes exactly what a
    straight one did.
    """

    columns: tuple[str, ...] = DPO_RESULT_COLUMNS

    def __init__(self, beta: float):
        self.beta = beta
        self.reference: Reference | None = None

    def read(self, path: Path) -> list[Any]:
        return read_preference_examples(path)

    def tokenize(self, tokenizer: Any, examples: list[Any], *, max_seq_len: int) -> PreparedData[Any]:
        return prepare_pairs(tokenizer, examples, max_seq_len=max_seq_len)

    def attach(self, loaded: LoadedModel, spec: TrainJobSpec) -> None:
        self.reference = build_reference(loaded, spec)

    def units(self, item: TokenizedPair) -> int:
        return 1

    def n_tokens(self, item: TokenizedPair) -> int:
        return len(item.chosen.input_ids) + len(item.rejected.input_ids)

    def sums(self, model: Any, micro: Sequence[TokenizedPair], forward: ForwardPass) -> dict[str, torch.Tensor]:
        assert self.reference is not None, "attach() first"
        sequences = [side for pair in micro for side in (pair.chosen, pair.rejected)]  # chosen at even indices
        # The reference first: its activations are gone before the policy's graph is built.
        with torch.no_grad(), self.reference.model() as reference:
            ref_scores = forward(reference, sequences)
            ref = ref_scores.per_sequence(ref_scores.logprobs)
        scores = forward(model, sequences)
        policy = scores.per_sequence(scores.logprobs)
        out = dpo_loss(policy[0::2], policy[1::2], ref[0::2], ref[1::2], self.beta)
        n = len(micro)  # dpo_loss averages over the micro-batch; × n makes sums that add up across micro-batches
        return {
            "loss": out.loss * n,
            "reward_margin": out.reward_margin * n,
            "preference_accuracy": out.accuracy * n,
            "chosen_reward": out.chosen_rewards.sum(),
            "rejected_reward": out.rejected_rewards.sum(),
        }

    def metrics(self, sums: dict[str, float], units: int, prefix: str) -> dict[str, float]:
        return _metrics(self.columns, sums, units, prefix)


def objective_for(spec: TrainJobSpec) -> Objective:
    if spec.method == "dpo":
        return PreferenceObjective(beta=(spec.dpo or DpoSpec()).beta)
    if spec.method == "reinforcement":
        if spec.reinforcement is None:
            raise ValueError("a reinforcement job needs its `reinforcement` settings")
        return ReinforcementObjective(spec.reinforcement, spec.seed)
    return SupervisedObjective()
