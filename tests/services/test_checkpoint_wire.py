"""The checkpoint object as OpenAI prints it: `metrics.step` an integer even when the trainer's JSON held 20.0."""

from __future__ import annotations

import json

from openft.db.tables import CheckpointRow
from openft.services.fine_tuning import checkpoint_to_wire


def test_checkpoint_metrics_step_is_an_integer() -> None:
    row = CheckpointRow(
        id="ftckpt_1",
        job_id="ftjob-1",
        created_at=1,
        step_number=20,
        metrics={"step": 20.0, "train_loss": 1.5, "valid_loss": None, "train_mean_token_accuracy": 1.0},
        fine_tuned_model_checkpoint="ft:m:org::ftjob-1:ckpt-step-20",
        path="/nowhere",
    )
    wire = json.loads(checkpoint_to_wire(row).model_dump_json())
    assert wire["metrics"] == {"step": 20, "train_loss": 1.5, "train_mean_token_accuracy": 1.0}
    assert isinstance(wire["metrics"]["step"], int)
    assert isinstance(wire["metrics"]["train_mean_token_accuracy"], float)  # the others stay numbers
