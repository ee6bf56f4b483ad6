"""Fine-tuning wire and rules without a server: `metrics.step` an integer even when the trainer's JSON held 20.0,
and which jobs Azure's DELETE may remove."""

from __future__ import annotations

import json

import pytest

from openft.db.tables import CheckpointRow, JobRow
from openft.errors import InvalidRequest
from openft.services.fine_tuning import _refuse_undeletable, checkpoint_to_wire


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


def test_a_job_whose_model_still_exists_is_not_deleted() -> None:
    """Deleting the job record must not take weights a client may still call: the model goes first."""
    row = JobRow(id="ftjob-1", status="succeeded", fine_tuned_model="ft:m:org::ftjob-1", model_deleted_at=None)
    with pytest.raises(InvalidRequest) as refused:
        _refuse_undeletable(row)
    assert refused.value.code == "invalid_job_state" and "DELETE /models/ft:m:org::ftjob-1" in refused.value.message
    row.model_deleted_at = 5
    _refuse_undeletable(row)  # the model is gone: the record may go
    _refuse_undeletable(JobRow(id="ftjob-2", status="failed", fine_tuned_model=None, model_deleted_at=None))
    with pytest.raises(InvalidRequest):
        _refuse_undeletable(JobRow(id="ftjob-3", status="running", fine_tuned_model=None, model_deleted_at=None))
