"""Organization scoping in the queries, on SQLite and PostgreSQL: one organization's rows, or every
organization's (`org_id=None`, admin keys); a paging cursor naming another tenant's row is refused."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import FileRow, JobRow
from openft.errors import InvalidRequest

ORG_A, ORG_B = "org-a", "org-b"


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _file(org: str, project: str | None = None) -> FileRow:
    return FileRow(
        id=ids.file_id(),
        organization_id=org,
        project=project,
        filename="f.jsonl",
        purpose="fine-tune",
        bytes=1,
        sha256="0" * 64,
        created_at=int(time.time()),
    )


def _job(org: str, project: str | None = None) -> JobRow:
    job_id = ids.job_id()
    return JobRow(
        id=job_id,
        organization_id=org,
        project=project,
        model="tiny",
        training_file="file-x",
        status="queued",
        created_at=int(time.time()),
        updated_at=time.time(),
        model_name=f"ft:tiny:{org}::{job_id}",
        method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        seed=1,
        result_files=[],
    )


def test_files_are_scoped_by_organization(sessions: sessionmaker[Session]) -> None:
    a, b = _file(ORG_A, "p1"), _file(ORG_B)
    with sessions.begin() as session:
        session.add_all([a, b])
    with sessions.begin() as session:
        assert repo.get_file(session, ORG_A, a.id) is not None
        assert repo.get_file(session, ORG_B, a.id) is None
        assert repo.get_file(session, None, a.id) is not None
        found = repo.get_file(session, None, b.id)
        assert found is not None and found.project is None
        assert repo.get_file(session, None, a.id).project == "p1"  # type: ignore[union-attr]
        listed = repo.list_files(session, ORG_B, purpose=None, after=None, limit=10, newest_first=True)
        assert [r.id for r in listed.data] == [b.id]
        everything = repo.list_files(session, None, purpose=None, after=None, limit=10, newest_first=True)
        assert [r.id for r in everything.data] == [b.id, a.id]
        with pytest.raises(InvalidRequest) as excinfo:  # another tenant's id is no cursor
            repo.list_files(session, ORG_B, purpose=None, after=a.id, limit=10, newest_first=True)
        assert excinfo.value.param == "after"
        assert repo.list_files(session, None, purpose=None, after=b.id, limit=10, newest_first=True).data[0].id == a.id


def test_jobs_and_events_are_scoped_by_organization(sessions: sessionmaker[Session]) -> None:
    a, b = _job(ORG_A, "p1"), _job(ORG_B)
    with sessions.begin() as session:
        session.add_all([a, b])
        session.flush()
        session.add_all([repo.new_event(a.id, "a1"), repo.new_event(b.id, "b1")])
    with sessions.begin() as session:
        assert repo.get_job(session, ORG_B, a.id) is None
        assert repo.get_job(session, None, a.id) is not None
        assert [j.id for j in repo.list_jobs(session, ORG_A, after=None, limit=10, metadata=None).data] == [a.id]
        assert [j.id for j in repo.list_jobs(session, None, after=None, limit=10, metadata=None).data] == [b.id, a.id]
        with pytest.raises(InvalidRequest):
            repo.list_jobs(session, ORG_A, after=b.id, limit=10, metadata=None)
        b_event = repo.list_events(session, b.id, after=None, limit=10).data[0]
        with pytest.raises(InvalidRequest):  # an event of another job is no cursor for this job's events
            repo.list_events(session, a.id, after=b_event.id, limit=10)
