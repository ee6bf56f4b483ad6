"""Queries. Services and the worker call these with a session they own (one transaction per use-case).

This is the only module that writes a job's status (docs/design.md §2): `transition_job`, `claim_next_job` and
`release_expired_claim` are compare-and-set UPDATEs (`WHERE status IN sources`) whose sources the transition
table (domain/job_states.py) allows, and each releases or takes the worker's claim with the status itself. A
runner's writes are fenced by the job's `attempt` number, so a late writer can never overwrite a newer decision.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Select, Update, and_, delete, func, or_, select, true, update
from sqlalchemy import String as SqlString
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session, aliased

from openft import ids
from openft.db import webhooks as webhook_outbox
from openft.db.tables import (
    ApiKeyRow,
    CheckpointPermissionRow,
    CheckpointRow,
    DatabaseIdentityRow,
    FileRow,
    JobEventRow,
    JobRow,
    OrganizationRow,
)
from openft.domain.claim_order import claim_order
from openft.domain.job_states import ACTIVE, TERMINAL, WAITING, JobStatus, check_transition, holds_claim, legal_sources
from openft.errors import InvalidRequest

Row = TypeVar("Row", FileRow, JobRow, JobEventRow, CheckpointRow, CheckpointPermissionRow)


@dataclass
class Page(Generic[Row]):
    data: list[Row]
    has_more: bool


def paginate(
    session: Session,
    stmt: Select[Row],
    model: type[Row],
    *,
    after: str | None,
    limit: int,
    newest_first: bool,
    owner: ColumnElement[bool] | None = None,
) -> Page[Row]:
    """Cursor pagination by public id: `after` is the id of the last item the client saw.

    `owner` limits which ids `after` may name (the caller's organization, the listed job), so a
    cursor naming another tenant's object is the same 400 as an id nobody made.
    """
    if after is not None:
        after_seq = session.scalar(select(model.seq).where(model.id == after, owner if owner is not None else true()))
        if after_seq is None:
            raise InvalidRequest(f"No object with id {after!r} to page after.", param="after")
        stmt = stmt.where(model.seq < after_seq if newest_first else model.seq > after_seq)
    stmt = stmt.order_by(model.seq.desc() if newest_first else model.seq.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return Page(data=rows[:limit], has_more=len(rows) > limit)


# Organizations --------------------------------------------------------------------------------


def database_identity(session: Session) -> str:
    """This database's id (one row, made by its migration)."""
    return session.scalars(select(DatabaseIdentityRow.id).order_by(DatabaseIdentityRow.seq).limit(1)).one()


def count_files_and_jobs(session: Session) -> int:
    """How many file and job rows exist, of every organization, deleted files included."""
    files = session.scalar(select(func.count()).select_from(FileRow)) or 0
    jobs = session.scalar(select(func.count()).select_from(JobRow)) or 0
    return files + jobs


def ensure_organization(session: Session, org_id: str, name: str) -> OrganizationRow:
    row = session.scalar(select(OrganizationRow).where(OrganizationRow.id == org_id))
    if row is None:
        row = OrganizationRow(id=org_id, name=name, created_at=int(time.time()))
        session.add(row)
        session.flush()
    return row


def get_organization(session: Session, org_id: str) -> OrganizationRow | None:
    return session.scalar(select(OrganizationRow).where(OrganizationRow.id == org_id))


def get_organization_by_name(session: Session, name: str) -> OrganizationRow | None:
    return session.scalar(select(OrganizationRow).where(OrganizationRow.name == name))


def lock_organization(session: Session, org_id: str) -> OrganizationRow | None:
    """The organization's row read afresh and locked until the transaction ends (PostgreSQL `FOR UPDATE`;
    SQLite's write transactions are serialized anyway): for checks of its limits that must not race."""
    return session.scalar(
        select(OrganizationRow)
        .where(OrganizationRow.id == org_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


def list_organizations(session: Session) -> Sequence[OrganizationRow]:
    return session.scalars(select(OrganizationRow).order_by(OrganizationRow.seq)).all()


def organization_names(session: Session) -> dict[str, str]:
    """id → name of every organization (few rows: one per team)."""
    return {row.id: row.name for row in session.execute(select(OrganizationRow.id, OrganizationRow.name))}


# API keys -------------------------------------------------------------------------------------


def add_api_key(session: Session, row: ApiKeyRow) -> None:
    session.add(row)
    session.flush()


def find_api_key_by_hash(session: Session, key_hash: str) -> ApiKeyRow | None:
    """The key with this hash, revoked or not (the unique index on `key_hash` makes this one lookup)."""
    return session.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash))


def get_api_key(session: Session, key_id: str) -> ApiKeyRow | None:
    return session.scalar(select(ApiKeyRow).where(ApiKeyRow.id == key_id))


def list_api_keys(session: Session, *, org_id: str | None = None, include_revoked: bool = True) -> Sequence[ApiKeyRow]:
    """Keys oldest first; `org_id=None` lists every organization's."""
    stmt = select(ApiKeyRow).order_by(ApiKeyRow.seq)
    if org_id is not None:
        stmt = stmt.where(ApiKeyRow.organization_id == org_id)
    if not include_revoked:
        stmt = stmt.where(ApiKeyRow.revoked_at.is_(None))
    return session.scalars(stmt).all()


def revoke_api_key(session: Session, key_id: str, now: int) -> bool:
    """Mark a key revoked; False when it does not exist or was already revoked (the first time is kept)."""
    result = _update(
        session, update(ApiKeyRow).where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None)).values(revoked_at=now)
    )
    return result.rowcount == 1


def _update(session: Session, stmt: Update) -> CursorResult[Any]:
    """Run an UPDATE; its result carries `rowcount` (the compare-and-set writes decide on it)."""
    return cast("CursorResult[Any]", session.execute(stmt))


# Files ----------------------------------------------------------------------------------------


def _live_files(org_id: str | None, now: int) -> Select[FileRow]:
    """Unexpired files of one organization, or of all of them (`org_id=None`: admin keys, the worker)."""
    stmt = select(FileRow).where((FileRow.expires_at.is_(None)) | (FileRow.expires_at > now))
    return stmt if org_id is None else stmt.where(FileRow.organization_id == org_id)


def get_file(session: Session, org_id: str | None, file_id: str) -> FileRow | None:
    return session.scalar(_live_files(org_id, int(time.time())).where(FileRow.id == file_id))


def existing_file_ids(session: Session, file_ids: Sequence[str]) -> set[str]:
    """Which of `file_ids` have a row (expired or not, any organization)."""
    found: set[str] = set()
    for start in range(0, len(file_ids), 500):
        found.update(session.scalars(select(FileRow.id).where(FileRow.id.in_(file_ids[start : start + 500]))))
    return found


def list_files(
    session: Session, org_id: str | None, *, purpose: str | None, after: str | None, limit: int, newest_first: bool
) -> Page[FileRow]:
    stmt = _live_files(org_id, int(time.time()))
    if purpose is not None:
        stmt = stmt.where(FileRow.purpose == purpose)
    owner = FileRow.organization_id == org_id if org_id is not None else None
    return paginate(session, stmt, FileRow, after=after, limit=limit, newest_first=newest_first, owner=owner)


def delete_file(session: Session, file_id: str) -> None:
    session.execute(delete(FileRow).where(FileRow.id == file_id))


def expired_files(session: Session, now: int) -> Sequence[FileRow]:
    return session.scalars(select(FileRow).where(FileRow.expires_at.is_not(None), FileRow.expires_at <= now)).all()


# Jobs -----------------------------------------------------------------------------------------


def get_job(session: Session, org_id: str | None, job_id: str) -> JobRow | None:
    """A job by id; `org_id=None` is for the worker and admin keys, which see every organization."""
    stmt = select(JobRow).where(JobRow.id == job_id)
    if org_id is not None:
        stmt = stmt.where(JobRow.organization_id == org_id)
    return session.scalar(stmt)


def _metadata_equals(session: Session, key: str, value: str) -> ColumnElement[bool]:
    """`metadata[key] == value`. SQLite matches a JSON path label against the key as stored, escapes and all
    (`\\u00e9` for é), so a non-ASCII key never matched and a `"` in a key broke the path; its `json_each`
    yields the decoded keys. Other databases take the key as a bound parameter (`metadata ->> :key`)."""
    if session.get_bind().dialect.name == "sqlite":
        pairs = func.json_each(JobRow.metadata_).table_valued("key", "value").alias("metadata_pair")
        return select(pairs.c.key).where(pairs.c.key == key, pairs.c.value == value).exists()
    return JobRow.metadata_[key].as_string() == value


def list_jobs(
    session: Session,
    org_id: str | None,
    *,
    after: str | None,
    limit: int,
    metadata: dict[str, str] | None,
    without_metadata: bool = False,
) -> Page[JobRow]:
    """Jobs newest first, of one organization or (`org_id=None`, admin keys) of all of them. `without_metadata`:
    only jobs that have none (SQL NULL, or the JSON `null` / `{}` a JSON column may hold for "none")."""
    stmt = select(JobRow)
    if org_id is not None:
        stmt = stmt.where(JobRow.organization_id == org_id)
    for key, value in (metadata or {}).items():
        stmt = stmt.where(_metadata_equals(session, key, value))
    if without_metadata:
        as_text = sql_cast(JobRow.metadata_, SqlString)
        stmt = stmt.where(or_(JobRow.metadata_.is_(None), as_text.in_(("null", "{}"))))
    owner = JobRow.organization_id == org_id if org_id is not None else None
    return paginate(session, stmt, JobRow, after=after, limit=limit, newest_first=True, owner=owner)


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
    """Move a job to `target` if its status is one of `sources` (default: every legal source; an illegal one
    raises `IllegalTransition`). A target that holds no claim (everything but running/pausing) releases the
    worker's claim in the same UPDATE: `worker_id` and the lease are cleared here, nowhere else.

    Returns False, changing nothing, when the job was in another status (someone else decided
    first) or, with `attempt`, when another claim has superseded the caller's.
    """
    allowed = legal_sources(target, sources)
    conditions = [JobRow.id == job_id, JobRow.status.in_([s.value for s in allowed])]
    if attempt is not None:
        conditions.append(JobRow.attempt == attempt)
    if not holds_claim(target):
        fields = {"worker_id": None, "lease_expires_at": None, **fields}
    result = _update(
        session, update(JobRow).where(and_(*conditions)).values(status=target.value, updated_at=time.time(), **fields)
    )
    return _changed_status(session, job_id, target, result.rowcount == 1)


def _changed_status(session: Session, job_id: str, target: JobStatus, changed: bool) -> bool:
    """Every status write ends here: a change to a status that sends a webhook event queues it in the same
    transaction (db/webhooks.py), so the event commits or rolls back with the change itself."""
    if changed:
        webhook_outbox.enqueue_job_event(session, job_id, target)
    return changed


def update_job_fenced(session: Session, job_id: str, attempt: int, **fields: Any) -> bool:
    """Write fields of a job the caller has claimed; False when the claim was taken over."""
    result = _update(
        session,
        update(JobRow).where(JobRow.id == job_id, JobRow.attempt == attempt).values(updated_at=time.time(), **fields),
    )
    return result.rowcount == 1


ACTIVE_STATUSES = tuple(s.value for s in ACTIVE)
"""A job in these holds a training slot: it counts against its organization's `max_running_jobs`."""
WAITING_STATUSES = tuple(s.value for s in WAITING)
"""A job in these waits for a worker: it counts against its organization's `max_queued_jobs`."""


def _unclaimed(now: float) -> ColumnElement[bool]:
    return or_(JobRow.lease_expires_at.is_(None), JobRow.lease_expires_at < now)


def _running_count(org_id: Any) -> Any:
    """Jobs of the organization `org_id` (a column or a value) holding a training slot."""
    running = aliased(JobRow)
    return (
        select(func.count())
        .select_from(running)
        .where(running.organization_id == org_id, running.status.in_(ACTIVE_STATUSES))
        .scalar_subquery()
    )


def _candidates(source: JobStatus, now: float, *, fair: bool) -> Select[str]:
    """Jobs in `source` a worker may claim, best first: `_fair_candidates` when `fair`, else oldest first."""
    if fair:
        return _fair_candidates(source, now)
    return select(JobRow.id).where(JobRow.status == source.value, _unclaimed(now)).order_by(JobRow.seq)


def _fair_candidates(source: JobStatus, now: float) -> Select[str]:
    """Jobs in `source` a worker may claim, best first: the organization that has waited longest since its
    last claim goes first (round-robin; never claimed counts as longest), then its oldest job (FIFO within
    the organization). An organization at its `max_running_jobs` is skipped altogether."""
    under_limit = or_(
        OrganizationRow.max_running_jobs.is_(None),
        _running_count(JobRow.organization_id) < OrganizationRow.max_running_jobs,
    )
    return (
        select(JobRow.id)
        .outerjoin(OrganizationRow, OrganizationRow.id == JobRow.organization_id)
        .where(JobRow.status == source.value, _unclaimed(now), under_limit)
        .order_by(func.coalesce(OrganizationRow.last_claimed_at, 0.0), JobRow.seq)
    )


def claim_next_job(
    session: Session,
    source: JobStatus,
    target: JobStatus,
    *,
    worker_id: str,
    lease_seconds: float,
    fair: bool = False,
) -> JobRow | None:
    """Atomically take the oldest job in `source` and move it to `target` for this worker.

    PostgreSQL: `FOR UPDATE SKIP LOCKED` lets many workers claim concurrently without taking the
    same job. SQLite ignores the clause; there the transaction's write lock (BEGIN IMMEDIATE)
    makes the select-then-update atomic. `attempt` is bumped: it is the fencing token.

    Only a job nobody holds a live lease on can be claimed: validation keeps the job in
    `validating_files` while a worker checks it, and without this another worker would take it over
    mid-check (and the first one's result would be refused). A dead validator's job is claimed again
    once its lease expires.

    `fair` (training claims): organizations take turns and their running limits hold (`_fair_candidates`).
    The organization's row is locked (PostgreSQL) and its running jobs counted again under that lock, so two
    workers claiming at once cannot both take the last slot of one organization.

    `target` is `source` itself (validation claims the job where it is) or a legal transition from it.
    """
    if target is not source:
        check_transition(source, target)
    now = time.time()
    job_id = session.scalar(_candidates(source, now, fair=fair).limit(1).with_for_update(skip_locked=True, of=JobRow))
    if job_id is None:
        return None
    if fair:
        org_id = session.execute(select(JobRow.organization_id).where(JobRow.id == job_id)).scalar_one()
        organization = lock_organization(session, org_id)
        if organization is not None:
            limit = organization.max_running_jobs
            if limit is not None and int(session.scalar(select(_running_count(org_id))) or 0) >= limit:
                return None  # another worker took the organization's last slot meanwhile
            organization.last_claimed_at = now
    result = _update(
        session,
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.status == source.value, _unclaimed(now))
        .values(
            status=target.value,
            worker_id=worker_id,
            lease_expires_at=now + lease_seconds,
            attempt=JobRow.attempt + 1,
            updated_at=now,
        ),
    )
    if result.rowcount != 1:
        return None
    session.flush()
    row = session.scalar(select(JobRow).where(JobRow.id == job_id).execution_options(populate_existing=True))
    return row


def renew_leases(session: Session, worker_id: str, claims: dict[str, int], lease_seconds: float) -> set[str]:
    """Extend the leases this worker still holds; returns the job ids whose claim it has lost."""
    lost = set()
    until = time.time() + lease_seconds
    for job_id, attempt in claims.items():
        result = _update(
            session,
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.attempt == attempt, JobRow.worker_id == worker_id)
            .values(lease_expires_at=until),
        )
        if result.rowcount != 1:
            lost.add(job_id)
    return lost


def has_claimable_job(session: Session, status: JobStatus, now: float, *, fair: bool = False) -> bool:
    """Whether `claim_next_job` from `status` would find a job (a cheap read before taking locks)."""
    return session.scalar(_candidates(status, now, fair=fair).limit(1)) is not None


def release_expired_claim(session: Session, job: JobRow, target: JobStatus, *, now: float, **fields: Any) -> bool:
    """Take a job back from a worker whose lease expired (it died or lost the database): move it to
    `target` and bump `attempt`, so nothing the old worker still tries to write is accepted.

    Conditional on the status, the attempt and the lease being still expired as read: if the worker
    renewed in the meantime, or another worker recovered the job first, nothing changes (False).
    """
    check_transition(JobStatus(job.status), target)
    result = _update(
        session,
        update(JobRow)
        .where(
            JobRow.id == job.id,
            JobRow.status == job.status,
            JobRow.attempt == job.attempt,
            or_(JobRow.lease_expires_at.is_(None), JobRow.lease_expires_at < now),
        )
        .values(
            status=target.value,
            worker_id=None,
            lease_expires_at=None,
            attempt=JobRow.attempt + 1,
            updated_at=time.time(),
            **fields,
        ),
    )
    return _changed_status(session, job.id, target, result.rowcount == 1)


def queue_snapshot(session: Session, *, recent_finished: int = 10) -> tuple[list[JobRow], list[JobRow], list[JobRow]]:
    """What queue estimates need: running and pausing jobs, queued jobs in claim order (jobs/queue.py),
    and the most recently succeeded jobs (their durations, when no running job shows the speed)."""
    running = list(session.scalars(select(JobRow).where(JobRow.status.in_(ACTIVE_STATUSES)).order_by(JobRow.seq)))
    queued = list(session.scalars(select(JobRow).where(JobRow.status == JobStatus.QUEUED.value).order_by(JobRow.seq)))
    if queued:
        orgs = {job.organization_id for job in queued}
        rows = session.execute(
            select(OrganizationRow.id, OrganizationRow.last_claimed_at).where(OrganizationRow.id.in_(orgs))
        )
        last_claimed = {org_id: claimed for org_id, claimed in rows}
        queued = claim_order(queued, last_claimed)
    finished = list(
        session.scalars(
            select(JobRow)
            .where(JobRow.status == JobStatus.SUCCEEDED.value, JobRow.started_at.is_not(None))
            .order_by(JobRow.finished_at.desc())
            .limit(recent_finished)
        )
    )
    return running, queued, finished


def jobs_with_expired_lease(session: Session, statuses: Iterable[JobStatus], now: float) -> Sequence[JobRow]:
    return session.scalars(
        select(JobRow).where(
            JobRow.status.in_([s.value for s in statuses]),
            (JobRow.lease_expires_at.is_(None)) | (JobRow.lease_expires_at < now),
        )
    ).all()


def finished_jobs(session: Session, job_ids: Sequence[str]) -> dict[str, tuple[JobStatus, int | None]]:
    """Which of `job_ids` finished (succeeded, failed, cancelled): id → (status, finished_at)."""
    terminal = [s.value for s in TERMINAL]
    rows = session.execute(
        select(JobRow.id, JobRow.status, JobRow.finished_at).where(JobRow.id.in_(job_ids), JobRow.status.in_(terminal))
    )
    return {row.id: (JobStatus(row.status), row.finished_at) for row in rows}


def job_statuses(session: Session, job_ids: Iterable[str]) -> dict[str, tuple[str, int]]:
    ids = list(job_ids)
    if not ids:
        return {}
    rows = session.execute(select(JobRow.id, JobRow.status, JobRow.attempt).where(JobRow.id.in_(ids)))
    return {row.id: (row.status, row.attempt) for row in rows}


def count_jobs_by_status(session: Session) -> dict[str, int]:
    """How many jobs are in each status, of every organization (`GET /metrics`); absent statuses have none.
    One GROUP BY that the `(status, seq)` index serves."""
    rows = session.execute(select(JobRow.status, func.count()).group_by(JobRow.status))
    return {status: int(count) for status, count in rows.tuples()}


# Events ---------------------------------------------------------------------------------------


def new_event(
    job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict[str, Any] | None = None
) -> JobEventRow:
    """An event row, built alike by every writer (service, worker, runner); a runner that must write it exactly
    once across retries builds it first and keeps its id."""
    return JobEventRow(
        id=ids.event_id(),
        job_id=job_id,
        created_at=int(time.time()),
        level=level,
        message=message,
        type=type,
        data=data,
    )


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> JobEventRow:
    """Record an event of a job in the caller's transaction."""
    row = new_event(job_id, message, level=level, type=type, data=data)
    session.add(row)
    return row


def event_exists(session: Session, event_id: str) -> bool:
    return session.scalar(select(JobEventRow.id).where(JobEventRow.id == event_id)) is not None


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> Page[JobEventRow]:
    stmt = select(JobEventRow).where(JobEventRow.job_id == job_id)
    owner = JobEventRow.job_id == job_id
    return paginate(session, stmt, JobEventRow, after=after, limit=limit, newest_first=True, owner=owner)


def metrics_event_steps(session: Session, job_id: str) -> list[tuple[str, int | None]]:
    """(event id, step) of every `metrics` event of a job, oldest first."""
    rows = session.execute(
        select(JobEventRow.id, JobEventRow.data)
        .where(JobEventRow.job_id == job_id, JobEventRow.type == "metrics")
        .order_by(JobEventRow.seq)
    )
    steps: list[tuple[str, int | None]] = []
    for event_id, data in rows:
        step = (data or {}).get("step")
        steps.append((event_id, step if isinstance(step, int) else None))
    return steps


def delete_events(session: Session, event_ids: Sequence[str]) -> None:
    for start in range(0, len(event_ids), 500):
        session.execute(delete(JobEventRow).where(JobEventRow.id.in_(event_ids[start : start + 500])))


def latest_events_starting(session: Session, job_ids: Sequence[str], prefix: str) -> dict[str, JobEventRow]:
    """The newest event of each job whose message starts with `prefix`."""
    if not job_ids:
        return {}
    rows = session.scalars(
        select(JobEventRow)
        .where(JobEventRow.job_id.in_(job_ids), JobEventRow.message.startswith(prefix, autoescape=True))
        .order_by(JobEventRow.seq)
    )
    return {row.job_id: row for row in rows}


# Checkpoints ----------------------------------------------------------------------------------


def list_checkpoints(session: Session, job_id: str, *, after: str | None, limit: int) -> Page[CheckpointRow]:
    stmt = select(CheckpointRow).where(CheckpointRow.job_id == job_id)
    owner = CheckpointRow.job_id == job_id
    return paginate(session, stmt, CheckpointRow, after=after, limit=limit, newest_first=True, owner=owner)


def checkpoints_of(session: Session, job_id: str) -> Sequence[CheckpointRow]:
    stmt = select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.seq)
    return session.scalars(stmt).all()


def delete_checkpoint_for_step(session: Session, job_id: str, step: int) -> None:
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id, CheckpointRow.step_number == step))


def delete_checkpoints_of(session: Session, job_id: str) -> None:
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id))


def delete_job(session: Session, job_id: str) -> None:
    """A job's row with its events and checkpoint rows (deleted explicitly: SQLite enforces the foreign keys'
    ON DELETE CASCADE only with its foreign_keys pragma on)."""
    session.execute(delete(JobEventRow).where(JobEventRow.job_id == job_id))
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id))
    session.execute(delete(JobRow).where(JobRow.id == job_id))


def find_checkpoint_by_model_name(session: Session, name: str) -> CheckpointRow | None:
    return session.scalar(select(CheckpointRow).where(CheckpointRow.fine_tuned_model_checkpoint == name))
