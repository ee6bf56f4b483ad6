"""Queries of the Batch API's tables (db/tables.py `BatchRow`, `BatchLineRow`).

A batch is leased work (db/leases.py): a worker claims it and bumps `attempt`, the fencing token, and every
later write of the worker (an answered line, a status change) is made only while `attempt` is still its own,
so a worker that lost its claim (lease expired, another worker took over) cannot write any more.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openft.db import leases
from openft.db.tables import BatchLineRow, BatchRow, FileRow
from openft.storage import StoredBlob

WORKING_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
"""Statuses a worker has work to do in: a batch in one of them is claimable when nobody holds it."""
FINAL_STATUSES = ("completed", "failed", "expired", "cancelled")
BATCH_OUTPUT_PURPOSE = "batch_output"
"""The purpose of the output and error files openft writes for a batch (as OpenAI names it)."""


def get_batch(session: Session, org_id: str | None, batch_id: str) -> BatchRow | None:
    stmt = select(BatchRow).where(BatchRow.id == batch_id)
    if org_id is not None:
        stmt = stmt.where(BatchRow.organization_id == org_id)
    return session.scalar(stmt)


def list_batches(session: Session, org_id: str, *, after: str | None, limit: int) -> tuple[list[BatchRow], bool]:
    """Newest first; `after` a batch id of the previous page. Also whether more follow."""
    stmt = select(BatchRow).where(BatchRow.organization_id == org_id)
    if after is not None:
        anchor = session.scalar(select(BatchRow.seq).where(BatchRow.id == after, BatchRow.organization_id == org_id))
        if anchor is not None:
            stmt = stmt.where(BatchRow.seq < anchor)
    rows = list(session.scalars(stmt.order_by(BatchRow.seq.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def claim_batch(session: Session, *, worker_id: str, lease_seconds: float) -> BatchRow | None:
    """Take the oldest batch with work left that nobody holds a live lease on (db/leases.py `claim`)."""
    return leases.claim(session, BatchRow, WORKING_STATUSES, worker_id=worker_id, lease_seconds=lease_seconds)


def renew_lease(session: Session, batch_id: str, attempt: int, lease_seconds: float) -> BatchRow | None:
    """Extend this worker's lease; the batch as it is now (its status may have become `cancelling`), or None
    when the claim is lost."""
    if not leases.renew(session, BatchRow, batch_id, attempt, lease_seconds):
        return None
    return session.scalar(select(BatchRow).where(BatchRow.id == batch_id).execution_options(populate_existing=True))


def set_fenced(session: Session, batch_id: str, attempt: int, **values: Any) -> bool:
    """Change the batch only while the claim `attempt` is still the holder's; whether it was."""
    return leases.set_fenced(session, BatchRow, batch_id, attempt, **values)


def holds(session: Session, batch_id: str, attempt: int) -> bool:
    """Whether `attempt` still holds the batch, the row locked (PostgreSQL) until the transaction ends, so a
    line recorded in the same transaction is recorded under a live claim."""
    return leases.holds(session, BatchRow, batch_id, attempt)


def record_line(session: Session, batch_id: str, attempt: int, line: int, ok: bool, record: dict[str, Any]) -> bool:
    """Record one answered line under the claim's fencing check; False when the claim is lost or the line was
    recorded already (never twice: the (batch, line) pair is unique)."""
    if not holds(session, batch_id, attempt):
        return False
    try:
        with session.begin_nested():
            session.add(BatchLineRow(batch_id=batch_id, line=line, ok=ok, record=record))
    except IntegrityError:
        return False
    return True


def record_lines(session: Session, batch_id: str, attempt: int, items: list[tuple[int, bool, dict[str, Any]]]) -> bool:
    """Record answered lines (line, ok, record) together under one fencing check; False when the claim is
    lost (nothing recorded). A line recorded already is skipped: never twice."""
    if not holds(session, batch_id, attempt):
        return False
    for line, ok, record in items:
        try:
            with session.begin_nested():
                session.add(BatchLineRow(batch_id=batch_id, line=line, ok=ok, record=record))
        except IntegrityError:
            continue
    return True


def answered_lines(session: Session, batch_id: str) -> set[int]:
    return set(session.scalars(select(BatchLineRow.line).where(BatchLineRow.batch_id == batch_id)))


def line_records(session: Session, batch_id: str) -> list[BatchLineRow]:
    """The recorded lines in input order (the output file's order)."""
    return list(
        session.scalars(select(BatchLineRow).where(BatchLineRow.batch_id == batch_id).order_by(BatchLineRow.line))
    )


def line_counts(session: Session, batch_ids: list[str]) -> dict[str, tuple[int, int]]:
    """(completed, failed) per batch: lines answered with status 200, and the others."""
    counts: dict[str, tuple[int, int]] = {}
    if not batch_ids:
        return counts
    rows = session.execute(select(BatchLineRow.batch_id, BatchLineRow.ok).where(BatchLineRow.batch_id.in_(batch_ids)))
    for batch_id, ok in rows:
        done, failed = counts.get(batch_id, (0, 0))
        counts[batch_id] = (done + 1, failed) if ok else (done, failed + 1)
    return counts


def add_output_file(session: Session, blob: StoredBlob, *, org_id: str, filename: str) -> str:
    """The file row of a batch's output or error file (purpose `batch_output`), in the caller's transaction."""
    session.add(
        FileRow(
            id=blob.key,
            organization_id=org_id,
            project=None,
            filename=filename,
            purpose=BATCH_OUTPUT_PURPOSE,
            bytes=blob.size,
            sha256=blob.sha256,
            created_at=int(time.time()),
            status="processed",
        )
    )
    return blob.key
