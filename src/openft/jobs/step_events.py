"""The `metrics` event of one training step: one builder, used for the trainer's live message (jobs/recorder.py)
and for a step replayed from metrics.jsonl after a crash (jobs/reconcile.py), so both read the same."""

from __future__ import annotations

from typing import Any

from openft.db import repositories as repo
from openft.db.tables import JobEventRow
from openft.trainer_contract import DPO_RESULT_COLUMNS, RESULT_COLUMNS, RFT_RESULT_COLUMNS

METRIC_NAMES = tuple(dict.fromkeys(RESULT_COLUMNS[1:] + DPO_RESULT_COLUMNS[1:] + RFT_RESULT_COLUMNS[1:]))
"""Metrics copied from the trainer's messages into `metrics` events (supervised, DPO and reinforcement)."""
SPEED_FIELDS = ("trained_tokens", "step_seconds")
"""Also copied into `metrics` events (not the result CSV): `openft jobs follow` computes tokens/s from them."""


def metrics_event(job_id: str, values: dict[str, Any], total: int) -> JobEventRow:
    """The `metrics` event of one step, from a metrics message or the same step's metrics.jsonl row."""
    step = int(values["step"])
    data = {"step": step, "total_steps": total}
    for name in (*METRIC_NAMES, *SPEED_FIELDS):
        if values.get(name) is not None:
            data[name] = values[name]
    text = f"Step {step}/{total}: training loss={float(values['train_loss']):.4f}"
    if values.get("train_reward_mean") is not None:  # reinforcement: the reward says more than the loss
        text += f", mean reward={float(values['train_reward_mean']):.4f}"
    return repo.new_event(job_id, text, type="metrics", data=data)
