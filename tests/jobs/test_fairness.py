"""Fair claims across organizations and their running limits, on SQLite and PostgreSQL: organizations take
turns (the one that has waited longest since its last claim first), FIFO within each; an organization at
its `max_running_jobs` is skipped; the queue positions the API reports follow the same order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, update
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import JobRow, OrganizationRow
from openft.domain.job_states import JobStatus
from openft.jobs.queue import estimate_queue

_counter = iter(range(1, 1_000_000))


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine: Engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _org(sessions: sessionmaker[Session], name: str, **limits: int) -> str:
    with sessions.begin() as session:
        row = repo.ensure_organization(session, f"org-{name}", name)
        for key, value in limits.items():
            setattr(row, key, value)
        return row.id


def queue_job(sessions: sessionmaker[Session], org_id: str) -> str:
    """A job that passed validation, waiting in the queue (what the worker's validation leaves)."""
    n = next(_counter)
    job_id = f"ftjob-{org_id}-{n}"
    with sessions.begin() as session:
        session.add(
            JobRow(
                id=job_id,
                organization_id=org_id,
                model="m",
                base_model="m",
                training_file="file-x",
                status=JobStatus.QUEUED.value,
                created_at=int(time.time()),
                updated_at=time.time(),
                model_name=f"ft:m:{org_id}::{n}",
                method={"type": "supervised"},
                seed=1,
                result_files=[],
                total_steps=10,
                completed_steps=0,
                attempt=0,
            )
        )
    return job_id


def claim(sessions: sessionmaker[Session]) -> str | None:
    with sessions.begin() as session:
        job = repo.claim_next_job(
            session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="w", lease_seconds=60, fair=True
        )
        return job.id if job is not None else None


def finish(sessions: sessionmaker[Session], job_id: str) -> None:
    with sessions.begin() as session:
        session.execute(update(JobRow).where(JobRow.id == job_id).values(status=JobStatus.SUCCEEDED.value))


def predicted_order(sessions: sessionmaker[Session]) -> list[str]:
    with sessions.begin() as session:
        running, queued, finished = repo.queue_snapshot(session)
        estimates = estimate_queue(running, queued, finished, time.time())
    return sorted(estimates, key=lambda job_id: estimates[job_id].position)


def test_a_later_organization_is_served_second_not_fourth(sessions: sessionmaker[Session]) -> None:
    org_a, org_b = _org(sessions, "team-a"), _org(sessions, "team-b")
    a_jobs = [queue_job(sessions, org_a) for _ in range(3)]
    b_job = queue_job(sessions, org_b)
    expected = [a_jobs[0], b_job, a_jobs[1], a_jobs[2]]
    assert predicted_order(sessions) == expected  # the positions the API and the queue events report
    claimed = []
    while (job_id := claim(sessions)) is not None:  # one slot: each job runs to the end before the next claim
        claimed.append(job_id)
        finish(sessions, job_id)
    assert claimed == expected


def test_round_robin_between_busy_organizations_keeps_fifo_within_each(sessions: sessionmaker[Session]) -> None:
    org_a, org_b, org_c = (_org(sessions, name) for name in ("a", "b", "c"))
    a = [queue_job(sessions, org_a) for _ in range(3)]
    b = [queue_job(sessions, org_b) for _ in range(2)]
    c = [queue_job(sessions, org_c)]
    expected = [a[0], b[0], c[0], a[1], b[1], a[2]]
    assert predicted_order(sessions) == expected
    claimed = [claim(sessions) for _ in range(6)]  # six slots: all run at once
    assert claimed == expected
    assert claim(sessions) is None


def test_an_organization_at_its_running_limit_is_skipped(sessions: sessionmaker[Session]) -> None:
    org_a = _org(sessions, "limited", max_running_jobs=1)
    org_b = _org(sessions, "other")
    a1, a2 = queue_job(sessions, org_a), queue_job(sessions, org_a)
    b1 = queue_job(sessions, org_b)
    assert claim(sessions) == a1
    assert claim(sessions) == b1
    with sessions.begin() as session:
        assert repo.has_claimable_job(session, JobStatus.QUEUED, time.time(), fair=True) is False
    assert claim(sessions) is None  # a2 waits while a1 runs, though a worker has a free slot
    finish(sessions, a1)
    assert claim(sessions) == a2


def test_a_pausing_job_still_holds_its_slot_and_zero_stops_claims(sessions: sessionmaker[Session]) -> None:
    org_a = _org(sessions, "pausing", max_running_jobs=1)
    a1, a2 = queue_job(sessions, org_a), queue_job(sessions, org_a)
    assert claim(sessions) == a1
    with sessions.begin() as session:
        session.execute(update(JobRow).where(JobRow.id == a1).values(status=JobStatus.PAUSING.value))
    assert claim(sessions) is None
    with sessions.begin() as session:
        session.execute(update(OrganizationRow).where(OrganizationRow.id == org_a).values(max_running_jobs=0))
    finish(sessions, a1)
    assert claim(sessions) is None  # 0: the operator stopped this organization's training
    with sessions.begin() as session:
        session.execute(update(OrganizationRow).where(OrganizationRow.id == org_a).values(max_running_jobs=None))
    assert claim(sessions) == a2


def test_concurrent_claims_never_pass_a_running_limit(sessions: sessionmaker[Session]) -> None:
    """Six workers claiming at once from an organization allowed two running jobs: two claims succeed."""
    org_a = _org(sessions, "busy", max_running_jobs=2)
    for _ in range(6):
        queue_job(sessions, org_a)
    claimed: list[str | None] = []
    barrier = threading.Barrier(6)

    def claim_one() -> None:
        barrier.wait()
        claimed.append(claim(sessions))

    threads = [threading.Thread(target=claim_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len([job for job in claimed if job is not None]) == 2
