"""The math of direct preference optimization, as pure torch functions (no model loading, no data).

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward
Model", https://arxiv.org/abs/2305.18290) trains on pairs (prompt, preferred answer, non-preferred answer)
without a reward model: the policy's implicit reward of an answer is β·(log π(y|x) − log π_ref(y|x)), and
the loss is the logistic loss of the preferred answer out-scoring the other. This is TRL's
`DPOTrainer` with `loss_type="sigmoid"` and no label smoothing (trl/trainer/dpo_trainer.py, `dpo_loss`),
so metrics are comparable with TRL's `rewards/chosen`, `rewards/margins` and `rewards/accuracies`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from openft.training.packing import IGNORE_INDEX


@dataclass(frozen=True)
class DpoOutput:
    """The loss to back-propagate and the detached metrics of one batch (see `trainer_contract.DPO_RESULT_COLUMNS`)."""

    loss: torch.Tensor
    """Mean over the batch of −log σ(β·((log πc − log πr) − (log refc − log refr)))."""
    chosen_rewards: torch.Tensor
    """Per pair, β·(log π − log π_ref) of the preferred answer (detached)."""
    rejected_rewards: torch.Tensor
    """Per pair, β·(log π − log π_ref) of the non-preferred answer (detached)."""
    reward_margin: torch.Tensor
    """Mean of chosen − rejected reward."""
    accuracy: torch.Tensor
    """Fraction of pairs whose preferred answer has the strictly higher reward."""


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Sum over each row of log p(label token), the log-likelihood of the answer tokens of each sequence.

    `logits` is `[batch, seq, vocab]` and `labels` `[batch, seq]` as a causal LM takes them: the logits at
    position t predict the label at t+1, so the two are shifted against each other here (like the model's
    own loss). Labels equal to `ignore_index` (prompt, padding) contribute nothing. A sum, not a mean: DPO
    compares the likelihood of whole answers, and the reference cancels the length bias of a sum.

    Computed in float32 whatever the logits' dtype, as log Z − logit gathered per label, so that no
    `[batch, seq, vocab]` log-softmax is kept; low-precision logits are upcast one row at a time to bound
    the extra memory to one sequence.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not match")
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    safe_labels = torch.where(mask, labels, 0).unsqueeze(-1)
    if logits.dtype in (torch.float32, torch.float64):
        token_logps = torch.gather(logits, -1, safe_labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    else:
        rows = []
        for row_logits, row_labels in zip(logits, safe_labels, strict=True):
            row_logits = row_logits.float()
            rows.append(torch.gather(row_logits, -1, row_labels).squeeze(-1) - torch.logsumexp(row_logits, dim=-1))
        token_logps = torch.stack(rows)
    return (token_logps * mask).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DpoOutput:
    """The sigmoid DPO loss of a batch of pairs from the summed log-probs of each answer (`sequence_logprobs`).

    loss = −log σ(β·((πc − πr) − (refc − refr))), with `F.logsigmoid` so that large margins neither overflow
    nor lose the gradient. The reference log-probs are constants (detached): only the policy learns. When the
    policy equals the reference the loss is log 2 and every reward 0.
    """
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    loss = -F.logsigmoid(beta * logits).mean()
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return DpoOutput(
        loss=loss,
        chosen_rewards=chosen_rewards,
        rejected_rewards=rejected_rewards,
        reward_margin=(chosen_rewards - rejected_rewards).mean(),
        accuracy=(chosen_rewards > rejected_rewards).float().mean(),
    )
