"""`jobs follow`, `jobs get` and `jobs list` without a server: tokens/s from metrics events, and the progress
taken from the job's own `completed_steps` / `total_steps` (docs/api-compatibility.md §4)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from openai.types.fine_tuning import FineTuningJob as SdkJob
from openai.types.fine_tuning import FineTuningJobEvent as SdkEvent

from openft.client.follow import EXIT_CODES, Speed, follow_job
from openft.client.jobs import job_steps, progress_text
from openft.protocol.fine_tuning import FineTuningJob, JobError, JobHyperparameters


def test_tokens_per_second_from_trained_tokens_and_step_seconds() -> None:
    speed = Speed()
    assert speed.tokens_per_second() is None
    speed.add({"step": 1, "trained_tokens": 100, "step_seconds": 1.0})
    assert speed.tokens_per_second() is None
    speed.add({"step": 2, "trained_tokens": 300, "step_seconds": 2.0})
    speed.add({"step": 4, "trained_tokens": 700, "step_seconds": 1.0})  # every 2nd step: 2 steps of 1 s
    assert speed.tokens_per_second() == pytest.approx(600 / 4)
    speed.add({"step": 2, "trained_tokens": 300, "step_seconds": 1.0})  # trained again after a recovery
    assert speed.tokens_per_second() is None
    speed.add({"step": 3, "train_loss": 1.0})  # events of older servers carry no speed fields
    assert speed.tokens_per_second() is None


def test_exit_codes() -> None:
    assert EXIT_CODES == {"succeeded": 0, "failed": 1, "cancelled": 2}


def _sdk_job(status: str, completed_steps: int | None, total_steps: int | None, **fields: Any) -> SdkJob:
    """What the SDK makes of the server's job: openft's wire object, read back by `openai`'s model."""
    values: dict[str, Any] = {"error": None, "finished_at": None} | fields
    wire = FineTuningJob(
        id="ftjob-follow",
        created_at=1_700_000_000,
        fine_tuned_model=None,
        hyperparameters=JobHyperparameters(batch_size=2, learning_rate_multiplier=1.0, n_epochs=2),
        model="tiny-llama",
        organization_id="org-x",
        result_files=[],
        seed=1,
        status=status,
        trained_tokens=None,
        training_file="file-x",
        validation_file=None,
        method={"type": "supervised"},
        completed_steps=completed_steps,
        total_steps=total_steps,
        **values,
    )
    return SdkJob.model_validate(wire.model_dump(mode="json"))


def test_progress_is_read_from_the_job() -> None:
    assert job_steps(_sdk_job("running", 7, 20)) == (7, 20)
    assert progress_text(_sdk_job("running", 7, 20)) == "7/20 steps"
    assert progress_text(_sdk_job("queued", 0, 20)) == "0/20 steps"
    assert progress_text(_sdk_job("validating_files", None, None)) == ""


class _FakeJobs:
    """`client.fine_tuning.jobs` answering the given jobs in turn, and one metrics event that lags them."""

    def __init__(self, jobs: list[SdkJob]) -> None:
        self._jobs = jobs
        metrics = {"step": 3, "total_steps": 20, "train_loss": 1.25}
        self._events = [
            SdkEvent.model_validate(
                {
                    "object": "fine_tuning.job.event",
                    "id": "ftevent-1",
                    "created_at": 1_700_000_100,
                    "level": "info",
                    "message": "Step 3/20: training loss=1.2500",
                    "type": "metrics",
                    "data": metrics,
                }
            )
        ]

    def retrieve(self, _job_id: str) -> SdkJob:
        return self._jobs.pop(0) if len(self._jobs) > 1 else self._jobs[0]

    def list_events(self, _job_id: str, **_kwargs: Any) -> SimpleNamespace:
        return SimpleNamespace(data=self._events, has_more=False)


def test_follow_shows_the_jobs_step_counts_not_the_newest_metrics_event(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setattr("openft.client.follow.time.sleep", lambda _seconds: None)
    error = JobError(code="training_error", message="boom")
    jobs = [_sdk_job("running", 5, 20), _sdk_job("failed", 7, 20, finished_at=1_700_000_200, error=error)]
    client = SimpleNamespace(fine_tuning=SimpleNamespace(jobs=_FakeJobs(jobs)))
    assert follow_job(client, "ftjob-follow", interval=0.1, as_json=False) == 1
    shown = capsys.readouterr().out
    assert "step 7/20" in shown and "loss 1.2500" in shown, shown  # the step from the job, the loss from the event
    assert "step 3/" not in shown
