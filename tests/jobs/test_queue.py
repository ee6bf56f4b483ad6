"""Queue visibility: positions, estimated start and finish (the rule in jobs/queue.py), their events and
the job object's extension fields."""

from __future__ import annotations

import time
from typing import Any

from openft.db import repositories as repo
from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus
from openft.jobs.queue import MAX_REPORTS_PER_STAY, QueueEstimate, estimate_queue, report_message, worth_reporting
from openft.services.container import Container
from tests.jobs.test_fairness import claim, finish, queue_job
from tests.jobs.test_worker import _job, _validate_all
from tests.support import openapi_schemas
from tests.support.data import jsonl_bytes, valid_examples

NOW = 1_700_000_000.0


def _row(name: str, status: JobStatus, *, base: str = "m", batch: int = 2, **fields: Any) -> JobRow:
    values: dict[str, Any] = {"total_steps": 100, "completed_steps": 0, "lease_expires_at": NOW + 30}
    values.update(fields)
    return JobRow(
        id=name,
        status=status.value,
        model=base,
        base_model=base,
        resolved_hyperparameters={"batch_size": batch},
        **values,
    )


def test_queued_jobs_wait_for_the_slot_that_frees_first() -> None:
    # two live slots: one frees in 100 s, the other in 400 s; speed 100 s / 50 steps × 2 = 1 s per example
    running = [
        _row("r1", JobStatus.RUNNING, completed_steps=50, estimated_finish=int(NOW + 100)),
        _row("r2", JobStatus.RUNNING, completed_steps=0, estimated_finish=int(NOW + 400), total_steps=200),
        _row("dead", JobStatus.RUNNING, estimated_finish=int(NOW + 5), lease_expires_at=NOW - 1),  # not a slot
    ]
    queued = [_row("q1", JobStatus.QUEUED, total_steps=100), _row("q2", JobStatus.QUEUED, total_steps=50)]
    estimates = estimate_queue(running, queued, [], NOW)
    # r1: 100 s over 100 examples; r2: 400 s over 400 examples: 1 s per example
    assert estimates["q1"] == QueueEstimate(1, 2, int(NOW + 100), int(NOW + 300) + 1)  # 200 examples
    assert estimates["q2"] == QueueEstimate(2, 2, int(NOW + 300), int(NOW + 400) + 1)  # r1's slot again, first free


def test_without_a_running_job_the_speed_comes_from_finished_ones_and_one_slot_is_assumed() -> None:
    finished = [_row("done", JobStatus.SUCCEEDED, started_at=int(NOW - 500), finished_at=int(NOW - 300))]  # 1 s/ex
    queued = [_row("q1", JobStatus.QUEUED, total_steps=10), _row("q2", JobStatus.QUEUED, total_steps=10)]
    estimates = estimate_queue([], queued, finished, NOW)
    assert estimates["q1"].estimated_start == int(NOW) and estimates["q2"].estimated_start == int(NOW + 20)
    unknown = estimate_queue([], queued, [], NOW)  # nothing has run: only the first start is known
    assert unknown["q1"].estimated_start == int(NOW) and unknown["q1"].estimated_finish is None
    assert unknown["q2"] == QueueEstimate(2, 2, None, None)
    assert report_message(unknown["q2"], NOW).startswith("Queued: position 2; no start estimate yet")


def test_a_resumed_job_counts_only_its_steps_left_and_a_pausing_job_frees_its_slot_now() -> None:
    running = [
        _row("p", JobStatus.PAUSING, estimated_finish=int(NOW + 900)),
        _row("r", JobStatus.RUNNING, completed_steps=90, estimated_finish=int(NOW + 20)),  # 1 s per example
    ]
    queued = [_row("resumed", JobStatus.QUEUED, completed_steps=60, total_steps=100)]
    assert estimate_queue(running, queued, [], NOW)["resumed"] == QueueEstimate(1, 1, int(NOW), int(NOW + 80) + 1)


def test_reports_are_made_when_the_place_changes_meaningfully_not_on_every_poll() -> None:
    first = QueueEstimate(2, 3, int(NOW + 600), None)
    data = {"queue_position": 2, "estimated_start": int(NOW + 600), "attempt": 4}
    assert worth_reporting(None, first, 4, NOW)
    assert worth_reporting(data, first, 5, NOW)  # a new stay in the queue (claimed and queued again)
    assert not worth_reporting(data, QueueEstimate(2, 4, int(NOW + 650), None), 4, NOW)  # drift, more behind
    assert worth_reporting(data, QueueEstimate(1, 3, int(NOW + 600), None), 4, NOW)  # moved up
    assert worth_reporting(data, QueueEstimate(2, 3, int(NOW + 1000), None), 4, NOW)  # 400 s > max(120, 150)
    assert worth_reporting(data, QueueEstimate(2, 3, None, None), 4, NOW)
    assert report_message(QueueEstimate(2, 3, int(NOW + 240), None), NOW) == (
        "Queued: position 2; estimated start in ~4 min"
    )


def test_workers_report_the_queue_and_jobs_show_it(container: Container) -> None:
    worker = container.worker
    assert worker is not None
    ids = [_job(container, jsonl_bytes(valid_examples(20)), batch_size=2, n_epochs=1) for _ in range(3)]  # 10 steps
    _validate_all(container)
    now = time.time()
    with container.sessions.begin() as session:  # the first job runs elsewhere: 100 s left, 2.5 s per example
        running = repo.claim_next_job(session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="w", lease_seconds=60)
        assert running is not None and running.id == ids[0]
        repo.update_job_fenced(session, running.id, running.attempt, completed_steps=0, estimated_finish=int(now + 50))
    worker.report_queue()
    worker.report_queue()

    def queue_events(job_id: str) -> list[Any]:
        events = container.fine_tuning.list_events(container.default_org_id, job_id, after=None, limit=50).data
        return [e for e in events if e.message.startswith("Queued:")]

    (second,) = queue_events(ids[1])
    (third,) = queue_events(ids[2])
    assert second.message == "Queued: position 1; estimated start in under a minute"
    assert third.message == "Queued: position 2; estimated start in ~2 min"
    assert third.data["queue_position"] == 2 and "queue_length" not in third.data

    job = container.fine_tuning.get(container.default_org_id, ids[2])
    assert job.queue_position == 2
    # slots free at now + 50 (the running job) and then after the second job's 20 examples at 2.5 s each; the
    # speed is measured when asked, so a slow machine moves the numbers by the seconds it took
    assert job.estimated_start is not None and now + 95 <= job.estimated_start <= now + 101
    assert job.estimated_finish is not None and abs(job.estimated_finish - job.estimated_start - 50) <= 5
    listed = {
        j.id: j for j in container.fine_tuning.list(container.default_org_id, after=None, limit=10, metadata=None).data
    }
    assert listed[ids[1]].queue_position == 1 and listed[ids[0]].queue_position is None
    assert listed[ids[0]].estimated_start is None
    openapi_schemas.validate(job.model_dump(mode="json"), "FineTuningJob")  # extension fields are allowed

    with container.sessions.begin() as session:  # the second one starts: the third moves up, and says so
        assert repo.claim_next_job(session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="w", lease_seconds=60)
    worker.report_queue()
    assert [e.data["queue_position"] for e in queue_events(ids[2])] == [1, 2]


def _queue_event_total(container: Container, queued: int) -> int:
    """Queue `queued` jobs, then claim them one at a time with a queue report before every claim (as the
    worker's loop does); the number of queue events made in all."""
    worker = container.worker
    assert worker is not None
    ids = [queue_job(container.sessions, container.default_org_id) for _ in range(queued)]
    for _ in ids:
        worker.report_queue()
        job_id = claim(container.sessions)
        assert job_id is not None
        finish(container.sessions, job_id)
    with container.sessions.begin() as session:
        return sum(
            1
            for job_id in ids
            for event in repo.list_events(session, job_id, after=None, limit=1000).data
            if event.message.startswith("Queued:")
        )


def test_queue_events_grow_linearly_with_the_queue(container: Container) -> None:
    """Every claim moves each queued job up one place; reporting every move made Q²/2 events (820 for 40 jobs).
    Each job now reports a notable move only, at most MAX_REPORTS_PER_STAY times, and always its turn at 1."""
    total = _queue_event_total(container, 40)
    assert total <= MAX_REPORTS_PER_STAY * 40
    assert total < 40 * 41 // 4  # far from quadratic


def test_each_job_still_hears_when_it_is_next(container: Container) -> None:
    worker = container.worker
    assert worker is not None
    ids = [queue_job(container.sessions, container.default_org_id) for _ in range(30)]
    for _ in range(29):
        worker.report_queue()
        job_id = claim(container.sessions)
        assert job_id is not None
        finish(container.sessions, job_id)
    worker.report_queue()
    with container.sessions.begin() as session:
        positions = [
            e.data["queue_position"]
            for e in reversed(repo.list_events(session, ids[-1], after=None, limit=100).data)
            if e.message.startswith("Queued:")
        ]
    assert positions[0] == 30 and positions[-1] == 1
    assert len(positions) <= MAX_REPORTS_PER_STAY
    assert positions == sorted(positions, reverse=True)
