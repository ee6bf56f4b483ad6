"""The worker's duties, one turn at a time, on a real database (no training process is started here)."""

from __future__ import annotations

import time

from openft.db import repositories as repo
from openft.domain.job_states import JobStatus
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, malformed_cases, valid_examples


def _job(container: Container, content: bytes, **hyperparameters: object) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(content)
    file_id = container.files.create(container.default_org_id, purpose="fine-tune", filename="t", writer=writer).id
    params = FineTuningJobCreate.model_validate(
        {"model": TINY_MODEL_NAME, "training_file": file_id, "hyperparameters": hyperparameters or None}
    )
    return container.fine_tuning.create(container.default_org_id, params).id


def _validate_all(container: Container) -> None:
    worker = container.worker
    assert worker is not None
    for _ in range(50):
        thread = worker.claim_validation()
        if thread is not None:
            thread.join()
        worker.reap()
        with container.sessions.begin() as session:
            if not repo.jobs_with_expired_lease(session, [JobStatus.VALIDATING_FILES], time.time() + 3600):
                return


def test_validation_resolves_auto_and_queues(container: Container) -> None:
    job_id = _job(container, jsonl_bytes(valid_examples(40)), batch_size=4)
    _validate_all(container)
    job = container.fine_tuning.get(container.default_org_id, job_id)
    assert job.status == "queued"
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (3, 4)
    assert job.method["supervised"]["hyperparameters"]["learning_rate_multiplier"] == 1.0
    with container.sessions.begin() as session:
        row = repo.get_job(session, None, job_id)
        assert row is not None and row.total_steps == 30 and row.n_examples == 40
    assert (container.settings.jobs_dir / job_id / "training.jsonl").exists()  # the job's own copy
    messages = [
        e.message
        for e in container.fine_tuning.list_events(container.default_org_id, job_id, after=None, limit=10).data
    ]
    assert messages[0].startswith("Files validated: 40 training examples.")
    worker = container.worker
    assert worker is not None
    worker.report_queue()  # the loop's next turn reports the job's place in the queue
    worker.report_queue()  # … once: nothing changed since
    events = container.fine_tuning.list_events(container.default_org_id, job_id, after=None, limit=10).data
    assert [e.message for e in events[:2]] == [
        "Queued: position 1; estimated start now",
        messages[0],
    ]
    assert events[0].data["queue_position"] == 1 and "queue_length" not in events[0].data  # others' business


def test_validation_failure_names_line_and_param(container: Container) -> None:
    content, code, line = malformed_cases()["bad_role"]
    job_id = _job(container, content)
    _validate_all(container)
    job = container.fine_tuning.get(container.default_org_id, job_id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == (code, "training_file")
    assert f"line {line}:" in job.error.message and "robot" in job.error.message


def test_abandoned_jobs_are_recovered(container: Container) -> None:
    worker = container.worker
    assert worker is not None
    running = _job(container, jsonl_bytes(valid_examples(12)))
    pausing = _job(container, jsonl_bytes(valid_examples(12)))
    with container.sessions.begin() as session:
        for job_id in (running, pausing):
            repo.transition_job(session, job_id, JobStatus.QUEUED)
        for _ in range(2):
            claimed = repo.claim_next_job(
                session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="dead-worker", lease_seconds=0.01
            )
            assert claimed is not None
        repo.transition_job(session, pausing, JobStatus.PAUSING)
    time.sleep(0.05)
    worker.recover_abandoned()
    assert container.fine_tuning.get(container.default_org_id, running).status == "queued"
    # a pausing job with no checkpoint yet cannot be paused: it goes back to the queue as well
    assert container.fine_tuning.get(container.default_org_id, pausing).status == "queued"
    events = container.fine_tuning.list_events(container.default_org_id, running, after=None, limit=1).data
    assert events[0].level == "warn"
    assert events[0].message == "Recovered after its worker stopped (at step 0); restarting from step 0."


def test_a_validation_that_ended_is_no_claim_beside_the_run_of_the_same_job(container: Container) -> None:
    """A job validated and claimed for training in the same turn, before the loop reaps the validation: the
    heartbeat renews the run's (newer) attempt. Renewing the validation's would find the claim "lost" and stop
    the run that had just started (seen with fast claims on the Ray executor)."""
    job_id = _job(container, jsonl_bytes(valid_examples(12)))
    worker = container.worker
    assert worker is not None
    thread = worker.claim_validation()
    assert thread is not None
    thread.join()  # ended, not reaped yet
    job = worker._claim(JobStatus.QUEUED, JobStatus.RUNNING)
    assert job is not None and job.id == job_id
    run = worker.prepare_run(job)
    with worker._lock:
        worker._runs[job_id] = run
    assert worker._claims() == {job_id: job.attempt}
    worker._heartbeat()
    assert not run._claim_lost
