"""The database layer through one code path on SQLite and PostgreSQL (see the `database_url` fixture)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import CheckpointRow, FileRow, JobRow
from openft.domain.job_states import IllegalTransition, JobStatus
from openft.domain.model_names import checkpoint_model_name
from openft.errors import InvalidRequest
from tests.support.rows import job_row

ORG = "org-test"


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    upgrade(engine)  # idempotent: a second start applies nothing
    yield make_session_factory(engine)
    engine.dispose()


def _file(n: int, purpose: str = "fine-tune", expires_at: int | None = None) -> FileRow:
    return FileRow(
        id=ids.file_id(),
        organization_id=ORG,
        filename=f"f{n}.jsonl",
        purpose=purpose,
        bytes=n,
        sha256="0" * 64,
        created_at=1000 + n,
        expires_at=expires_at,
    )


def _job(status: JobStatus = JobStatus.QUEUED, metadata: dict[str, str] | None = None) -> JobRow:
    return job_row(ORG, status, metadata)


def test_migrations_create_every_table(database_url: str, sessions: sessionmaker[Session]) -> None:
    engine = make_engine(database_url)
    tables = set(inspect(engine).get_table_names())
    engine.dispose()
    assert {"files", "fine_tuning_jobs", "fine_tuning_job_events", "fine_tuning_job_checkpoints"} <= tables


def test_file_pagination_order_purpose_and_expiry(sessions: sessionmaker[Session]) -> None:
    rows = [_file(n) for n in range(5)] + [_file(9, purpose="batch"), _file(10, expires_at=1)]
    with sessions.begin() as session:
        session.add_all(rows)
    with sessions.begin() as session:
        page = repo.list_files(session, ORG, purpose="fine-tune", after=None, limit=2, newest_first=True)
        assert [r.filename for r in page.data] == ["f4.jsonl", "f3.jsonl"] and page.has_more
        page = repo.list_files(session, ORG, purpose="fine-tune", after=page.data[-1].id, limit=10, newest_first=True)
        assert [r.filename for r in page.data] == ["f2.jsonl", "f1.jsonl", "f0.jsonl"] and not page.has_more
        page = repo.list_files(session, ORG, purpose=None, after=None, limit=100, newest_first=False)
        assert [r.bytes for r in page.data] == [0, 1, 2, 3, 4, 9]  # the expired file is invisible
        assert repo.get_file(session, ORG, rows[-1].id) is None
        assert repo.get_file(session, "org-other", rows[0].id) is None
        with pytest.raises(InvalidRequest) as excinfo:
            repo.list_files(session, ORG, purpose=None, after="file-nope", limit=5, newest_first=True)
        assert excinfo.value.param == "after"
        assert [r.id for r in repo.expired_files(session, int(time.time()))] == [rows[-1].id]


def test_transitions_are_compare_and_set_and_fenced(sessions: sessionmaker[Session]) -> None:
    job = _job(JobStatus.RUNNING)
    job.attempt = 3
    with sessions.begin() as session:
        session.add(job)
    with sessions.begin() as session:
        assert not repo.transition_job(session, job.id, JobStatus.PAUSED)  # not from running
        assert not repo.transition_job(session, job.id, JobStatus.SUCCEEDED, attempt=2)  # stale claim
        assert not repo.update_job_fenced(session, job.id, 2, completed_steps=5)
        assert repo.update_job_fenced(session, job.id, 3, completed_steps=5)
        assert repo.transition_job(session, job.id, JobStatus.PAUSING, sources=[JobStatus.RUNNING])
        assert not repo.transition_job(session, job.id, JobStatus.PAUSING, sources=[JobStatus.RUNNING])
        assert repo.transition_job(session, job.id, JobStatus.PAUSED, attempt=3)
    with sessions.begin() as session:
        row = repo.get_job(session, ORG, job.id)
        assert row is not None and row.status == "paused" and row.completed_steps == 5


def test_a_transition_out_of_a_claimed_status_releases_the_claim(sessions: sessionmaker[Session]) -> None:
    job = _job(JobStatus.RUNNING)
    job.worker_id, job.lease_expires_at = "w", time.time() + 60
    with sessions.begin() as session:
        session.add(job)
    with sessions.begin() as session:
        assert repo.transition_job(session, job.id, JobStatus.PAUSING)  # still held: the trainer checkpoints
        row = repo.get_job(session, ORG, job.id)
        assert row is not None and row.worker_id == "w" and row.lease_expires_at is not None
        assert repo.transition_job(session, job.id, JobStatus.PAUSED)
    with sessions.begin() as session:
        row = repo.get_job(session, ORG, job.id)
        assert row is not None and row.worker_id is None and row.lease_expires_at is None


def test_illegal_writes_are_refused_by_the_table(sessions: sessionmaker[Session]) -> None:
    job = _job(JobStatus.PAUSED)
    with sessions.begin() as session:
        session.add(job)
    with sessions.begin() as session, pytest.raises(IllegalTransition):
        repo.transition_job(session, job.id, JobStatus.RUNNING, sources=[JobStatus.PAUSED])
    with sessions.begin() as session, pytest.raises(IllegalTransition):
        repo.claim_next_job(session, JobStatus.PAUSED, JobStatus.RUNNING, worker_id="w", lease_seconds=30)
    with sessions.begin() as session:
        row = repo.get_job(session, ORG, job.id)
        assert row is not None and row.status == "paused"


def test_each_job_is_claimed_by_exactly_one_worker(sessions: sessionmaker[Session]) -> None:
    jobs = [_job() for _ in range(12)]
    with sessions.begin() as session:
        session.add_all(jobs)
    claimed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with sessions.begin() as session:
                row = repo.claim_next_job(
                    session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id=name, lease_seconds=30
                )
            if row is None:
                return
            with lock:
                claimed.setdefault(row.id, []).append(name)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(j.id for j in jobs)
    assert all(len(owners) == 1 for owners in claimed.values())
    with sessions.begin() as session:
        row = repo.get_job(session, None, jobs[0].id)
        assert row is not None and row.attempt == 1 and row.lease_expires_at is not None


def test_leases_renew_and_expire(sessions: sessionmaker[Session]) -> None:
    job = _job()
    with sessions.begin() as session:
        session.add(job)
    with sessions.begin() as session:
        row = repo.claim_next_job(session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id="w1", lease_seconds=0.01)
        assert row is not None
    time.sleep(0.05)
    with sessions.begin() as session:
        assert [r.id for r in repo.jobs_with_expired_lease(session, [JobStatus.RUNNING], time.time())] == [job.id]
        assert repo.renew_leases(session, "w1", {job.id: 1}, 30) == set()
        assert repo.renew_leases(session, "w2", {job.id: 1}, 30) == {job.id}  # not its claim
        assert repo.jobs_with_expired_lease(session, [JobStatus.RUNNING], time.time()) == []


def test_job_list_metadata_filter_and_events_newest_first(sessions: sessionmaker[Session]) -> None:
    a, b, c = _job(metadata={"team": "red"}), _job(metadata={"team": "blue"}), _job()
    with sessions.begin() as session:
        session.add_all([a, b, c])
        session.flush()
        for i in range(5):
            session.add(repo.new_event(a.id, f"event {i}"))
    with sessions.begin() as session:
        page = repo.list_jobs(session, ORG, after=None, limit=10, metadata={"team": "red"})
        assert [r.id for r in page.data] == [a.id]
        assert [r.id for r in repo.list_jobs(session, ORG, after=None, limit=10, metadata=None).data] == [
            c.id,
            b.id,
            a.id,
        ]
        events = repo.list_events(session, a.id, after=None, limit=2)
        assert [e.message for e in events.data] == ["event 4", "event 3"] and events.has_more
        older = repo.list_events(session, a.id, after=events.data[-1].id, limit=10)
        assert [e.message for e in older.data] == ["event 2", "event 1", "event 0"] and not older.has_more


def test_metadata_filter_matches_any_key_exactly(sessions: sessionmaker[Session]) -> None:
    """Non-ASCII keys (stored escaped in SQLite's JSON text), quotes and path syntax in keys; no normalization."""
    nfc, nfd = "\u00e9", "e\u0301"
    odd = {nfc: "nfc", nfd: "nfd", 'a"b': "quote", "$.x[0]": "path", "😀": "caf\u00e9"}
    a, b = _job(metadata=odd), _job(metadata={"team": "red"})
    with sessions.begin() as session:
        session.add_all([a, b])
    with sessions.begin() as session:
        for key, value in odd.items():
            assert [r.id for r in repo.list_jobs(session, ORG, after=None, limit=10, metadata={key: value}).data] == [
                a.id
            ], key
        for key, value in ((nfc, "nfd"), ("😀", "cafe\u0301"), ("a", "quote"), ("team", "blue")):
            assert repo.list_jobs(session, ORG, after=None, limit=10, metadata={key: value}).data == [], key
        both = repo.list_jobs(session, ORG, after=None, limit=10, metadata={nfc: "nfc", 'a"b': "quote"})
        assert [r.id for r in both.data] == [a.id]


def test_checkpoints_by_step_and_model_name(sessions: sessionmaker[Session]) -> None:
    job = _job()
    with sessions.begin() as session:
        session.add(job)
        session.flush()
        for step in (3, 6, 9):
            session.add(
                CheckpointRow(
                    id=ids.checkpoint_id(),
                    job_id=job.id,
                    created_at=0,
                    step_number=step,
                    metrics={"step": step},
                    fine_tuned_model_checkpoint=checkpoint_model_name(job.model_name, step),
                    path=f"/x/{step}",
                )
            )
    with sessions.begin() as session:
        assert [c.step_number for c in repo.list_checkpoints(session, job.id, after=None, limit=10).data] == [9, 6, 3]
        repo.delete_checkpoint_for_step(session, job.id, 3)
        found = repo.find_checkpoint_by_model_name(session, checkpoint_model_name(job.model_name, 6))
        assert found is not None and found.path == "/x/6"
        assert [c.step_number for c in repo.checkpoints_of(session, job.id)] == [6, 9]


def test_migrations_match_the_table_definitions(database_url: str, sessions: sessionmaker[Session]) -> None:
    """A column added to tables.py without a migration (or the reverse) fails here, on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from openft.db.tables import Base

    engine = make_engine(database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()
