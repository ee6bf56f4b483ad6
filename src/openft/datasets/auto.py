"""Resolving `"auto"` hyperparameters from the data, as the hosted services do (docs/api-compatibility.md §6).

Sources (documented in README "How `auto` is resolved"):
- n_epochs: the OpenAI cookbook's estimator (`Chat_finetuning_data_prep.ipynb`): 3 epochs, raised
  for tiny data so that about 100 examples are seen (at most 25 epochs) and lowered for huge data so
  that about 25,000 are (at least 1).
- batch_size: the legacy OpenAI fine-tunes default, about 0.2% of the examples, between 1 and 256.
- learning_rate_multiplier: the learning rate is `multiplier × base LR` (base LR 2e-4 for LoRA, the
  usual LoRA rate; 2e-5 for full fine-tuning). "auto" picks 1.0 up to batch 8 and grows with the
  square root of the batch beyond (larger batches average away noise and tolerate larger steps),
  capped at 4. Modern OpenAI jobs on small chat sets report multipliers of about 2 with batch 1;
  ours are on another base LR and are not comparable numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BASE_LR_LORA = 2e-4
BASE_LR_FULL = 2e-5


@dataclass(frozen=True)
class Resolved:
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    def steps(self, n_examples: int) -> int:
        return self.n_epochs * steps_per_epoch(n_examples, self.batch_size)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def auto_n_epochs(n_examples: int) -> int:
    n_epochs = 3
    if n_examples * n_epochs < 100:
        n_epochs = min(25, 100 // max(1, n_examples))
    elif n_examples * n_epochs > 25_000:
        n_epochs = max(1, 25_000 // n_examples)
    return n_epochs


def auto_batch_size(n_examples: int) -> int:
    return max(1, min(256, round(n_examples * 0.002)))


def auto_learning_rate_multiplier(batch_size: int) -> float:
    return round(min(4.0, max(1.0, math.sqrt(batch_size / 8))), 4)


def resolve(
    n_examples: int,
    *,
    n_epochs: int | str = "auto",
    batch_size: int | str = "auto",
    learning_rate_multiplier: float | str = "auto",
) -> Resolved:
    """Replace each "auto" by its heuristic value; explicit numbers are kept as given."""
    resolved_batch = auto_batch_size(n_examples) if batch_size == "auto" else int(batch_size)
    return Resolved(
        n_epochs=auto_n_epochs(n_examples) if n_epochs == "auto" else int(n_epochs),
        batch_size=resolved_batch,
        learning_rate_multiplier=(
            auto_learning_rate_multiplier(resolved_batch)
            if learning_rate_multiplier == "auto"
            else float(learning_rate_multiplier)
        ),
    )
