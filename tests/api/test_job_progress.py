"""The job object's progress extensions, `completed_steps` and `total_steps` (docs/api-compatibility.md §4):
null until the files are validated, then the row's plan and progress, which the CLI and the dashboard show."""

from __future__ import annotations

from openft.db import repositories as repo
from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus
from openft.services.container import Container
from openft.services.fine_tuning import job_to_wire
from tests.jobs.test_worker import _job, _validate_all
from tests.support import openapi_schemas
from tests.support.data import jsonl_bytes, valid_examples


def test_a_running_job_reports_its_completed_and_total_steps(container: Container) -> None:
    org = container.default_org_id
    job_id = _job(container, jsonl_bytes(valid_examples(40)), batch_size=4, n_epochs=2)
    created = container.fine_tuning.get(org, job_id)
    assert (created.status, created.completed_steps, created.total_steps) == ("validating_files", None, None)

    _validate_all(container)
    queued = container.fine_tuning.get(org, job_id)
    assert (queued.status, queued.completed_steps, queued.total_steps) == ("queued", 0, 20)  # 2 epochs × 40/4

    with container.sessions.begin() as session:
        running = repo.claim_next_job(session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="w", lease_seconds=60)
        assert running is not None and running.id == job_id
        assert repo.update_job_fenced(session, job_id, running.attempt, completed_steps=7)
    job = container.fine_tuning.get(org, job_id)
    assert (job.status, job.completed_steps, job.total_steps) == ("running", 7, 20)
    (listed,) = container.fine_tuning.list(org, after=None, limit=10, metadata=None).data
    assert (listed.completed_steps, listed.total_steps) == (7, 20)
    wire = job.model_dump(mode="json")
    assert (wire["completed_steps"], wire["total_steps"]) == (7, 20)
    openapi_schemas.validate(wire, "FineTuningJob")  # extra properties are allowed by OpenAI's schema


def test_a_job_that_failed_validation_has_no_step_counts() -> None:
    row = JobRow(
        id="ftjob-x",
        organization_id="org",
        model="m",
        base_model="m",
        training_file="file-x",
        status=JobStatus.FAILED.value,
        method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        seed=1,
        created_at=1,
        completed_steps=0,
        total_steps=None,
    )
    job = job_to_wire(row)
    assert (job.completed_steps, job.total_steps) == (None, None)
    openapi_schemas.validate(job.model_dump(mode="json"), "FineTuningJob")
