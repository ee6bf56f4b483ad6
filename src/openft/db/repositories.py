"""Queries. Services and the worker call these with a session they own (one transaction per use-case).

Status changes are compare-and-set UPDATEs (`WHERE status IN sources`), and a runner's writes are
fenced by the job's `attempt` number, so a late writer can never overwrite a newer decision.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, delete, func, select, update
from sqlalchemy.orm import Session

from openft.db.tables import CheckpointRow, FileRow, JobEventRow, JobRow, OrganizationRow
from openft.errors import InvalidRequest
from openft.jobs.states import JobStatus, sources_of

Row = TypeVar("Row", FileRow, JobRow, JobEventRow, CheckpointRow)


@dataclass
class Page(Generic[Row]):
    data: list[Row]
    has_more: bool


def _paginate(
    session: Session, stmt: Select[tuple[Row]], model: type[Row], *, after: str | None, limit: int, newest_first: bool
) -> Page[Row]:
    """Cursor pagination by public id: `after` is the id of the last item the client saw."""
    if after is not None:
        after_seq = session.scalar(select(model.seq).where(model.id == after))
        if after_seq is None:
            raise InvalidRequest(f"No object with id {after!r} to page after.", param="after")
        stmt = stmt.where(model.seq < after_seq if newest_first else model.seq > after_seq)
    stmt = stmt.order_by(model.seq.desc() if newest_first else model.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return Page(data=rows[:limit], has_more=len(rows) > limit)


# Organizations --------------------------------------------------------------------------------


def ensure_organization(session: Session, org_id: str, name: str) -> OrganizationRow:
    row = session.scalar(select(OrganizationRow).where(OrganizationRow.id == org_id))
    if row is None:
        row = OrganizationRow(id=org_id, name=name, created_at=int(time.time()))
        session.add(row)
        session.flush()
    return row


def get_organization(session: Session, org_id: str) -> OrganizationRow | None:
    return session.scalar(select(OrganizationRow).where(OrganizationRow.id == org_id))


# Files ----------------------------------------------------------------------------------------


def _live_files(org_id: str, now: int) -> Select[tuple[FileRow]]:
    return select(FileRow).where(
        FileRow.organization_id == org_id, (FileRow.expires_at.is_(None)) | (FileRow.expires_at > now)
    )


def get_file(session: Session, org_id: str, file_id: str) -> FileRow | None:
    return session.scalar(_live_files(org_id, int(time.time())).where(FileRow.id == file_id))


def list_files(
    session: Session, org_id: str, *, purpose: str | None, after: str | None, limit: int, newest_first: bool
) -> Page[FileRow]:
    stmt = _live_files(org_id, int(time.time()))
    if purpose is not None:
        stmt = stmt.where(FileRow.purpose == purpose)
    return _paginate(session, stmt, FileRow, after=after, limit=limit, newest_first=newest_first)


def delete_file(session: Session, file_id: str) -> None:
    session.execute(delete(FileRow).where(FileRow.id == file_id))


def expired_files(session: Session, now: int) -> Sequence[FileRow]:
    return session.scalars(select(FileRow).where(FileRow.expires_at.is_not(None), FileRow.expires_at <= now)).all()


# Jobs -----------------------------------------------------------------------------------------


def get_job(session: Session, org_id: str | None, job_id: str) -> JobRow | None:
    """A job by id; `org_id=None` is for the worker, which serves every organization."""
    stmt = select(JobRow).where(JobRow.id == job_id)
    if org_id is not None:
        stmt = stmt.where(JobRow.organization_id == org_id)
    return session.scalar(stmt)


def list_jobs(
    session: Session, org_id: str, *, after: str | None, limit: int, metadata: dict[str, str] | None
) -> Page[JobRow]:
    stmt = select(JobRow).where(JobRow.organization_id == org_id)
    for key, value in (metadata or {}).items():
        stmt = stmt.where(JobRow.metadata_[key].as_string() == value)
    return _paginate(session, stmt, JobRow, after=after, limit=limit, newest_first=True)


def find_job_by_model_name(session: Session, model_name: str) -> JobRow | None:
    return session.scalar(select(JobRow).where(JobRow.model_name == model_name))


def transition_job(
    session: Session,
    job_id: str,
    target: JobStatus,
    *,
    sources: Iterable[JobStatus] | None = None,
    attempt: int | None = None,
    **fields: Any,
) -> bool:
    """Move a job to `target` if its status is one of `sources` (default: every legal source).

    Returns False, changing nothing, when the job was in another status (someone else decided
    first) or, with `attempt`, when another claim has superseded the caller's.
    """
    allowed = set(sources_of(target) if sources is None else sources) & set(sources_of(target))
    conditions = [JobRow.id == job_id, JobRow.status.in_([s.value for s in allowed])]
    if attempt is not None:
        conditions.append(JobRow.attempt == attempt)
    result = session.execute(
        update(JobRow).where(and_(*conditions)).values(status=target.value, updated_at=time.time(), **fields)
    )
    return result.rowcount == 1


def update_job_fenced(session: Session, job_id: str, attempt: int, **fields: Any) -> bool:
    """Write fields of a job the caller has claimed; False when the claim was taken over."""
    result = session.execute(
        update(JobRow).where(JobRow.id == job_id, JobRow.attempt == attempt).values(updated_at=time.time(), **fields)
    )
    return result.rowcount == 1


def claim_next_job(
    session: Session, source: JobStatus, target: JobStatus, *, worker_id: str, lease_seconds: float
) -> JobRow | None:
    """Atomically take the oldest job in `source` and move it to `target` for this worker.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets many workers claim concurrently without taking the
    same job. SQLite ignores the clause; there the transaction's write lock (BEGIN IMMEDIATE)
    makes the select-then-update atomic. `attempt` is bumped: it is the fencing token.
    """
    candidate = (
        select(JobRow.id)
        .where(JobRow.status == source.value)
        .order_by(JobRow.seq)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job_id = session.scalar(candidate)
    if job_id is None:
        return None
    now = time.time()
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == source.value)
        .values(
            status=target.value,
            worker_id=worker_id,
            lease_expires_at=now + lease_seconds,
            attempt=JobRow.attempt + 1,
            updated_at=now,
        )
    )
    if result.rowcount != 1:
        return None
    row = session.scalar(select(JobRow).where(JobRow.id == job_id).execution_options(populate_existing=True))
    return row


def renew_leases(session: Session, worker_id: str, claims: dict[str, int], lease_seconds: float) -> set[str]:
    """Extend the leases this worker still holds; returns the job ids whose claim it has lost."""
    lost = set()
    until = time.time() + lease_seconds
    for job_id, attempt in claims.items():
        result = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempt == attempt, JobRow.worker_id == worker_id)
            .values(lease_expires_at=until)
        )
        if result.rowcount != 1:
            lost.add(job_id)
    return lost


def jobs_with_expired_lease(session: Session, statuses: Iterable[JobStatus], now: float) -> Sequence[JobRow]:
    return session.scalars(
        select(JobRow).where(
            JobRow.status.in_([s.value for s in statuses]),
            (JobRow.lease_expires_at.is_(None)) | (JobRow.lease_expires_at < now),
        )
    ).all()


def queue_position(session: Session, job: JobRow) -> int:
    """How many queued jobs are ahead of this one (0 = next)."""
    return int(
        session.scalar(select(func.count()).where(JobRow.status == JobStatus.QUEUED.value, JobRow.seq < job.seq)) or 0
    )


def job_statuses(session: Session, job_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    ids = list(job_ids)
    if not ids:
        return {}
    rows = session.execute(select(JobRow.id, JobRow.status, JobRow.attempt).where(JobRow.id.in_(ids)))
    return {row.id: (row.status, row.attempt) for row in rows}


# Events ---------------------------------------------------------------------------------------


def add_event(session: Session, row: JobEventRow) -> None:
    session.add(row)


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> Page[JobEventRow]:
    stmt = select(JobEventRow).where(JobEventRow.job_id == job_id)
    return _paginate(session, stmt, JobEventRow, after=after, limit=limit, newest_first=True)


# Checkpoints ----------------------------------------------------------------------------------


def list_checkpoints(session: Session, job_id: str, *, after: str | None, limit: int) -> Page[CheckpointRow]:
    stmt = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    return _paginate(session, stmt, CheckpointRow, after=after, limit=limit, newest_first=True)


def checkpoint_for_step(session: Session, job_id: str, step: int) -> CheckpointRow | None:
    return session.scalar(
        select(CheckpointRow).where(CheckpointRow.job_id == job_id, CheckpointRow.step_number == step)
    )


def delete_checkpoint_for_step(session: Session, job_id: str, step: int) -> None:
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id, CheckpointRow.step_number == step))


def find_checkpoint_by_model_name(session: Session, name: str) -> CheckpointRow | None:
    return session.scalar(select(CheckpointRow).where(CheckpointRow.fine_tuned_model_checkpoint == name))
