"""Claiming leased work: a batch (db/batches.py) or an eval run (db/evals.py), held by one worker at a time.

Both are claimed the same way, so the queries live here once. A claim is an atomic UPDATE that takes a row
nobody holds a live lease on, gives it to one worker (`worker_id`, `lease_expires_at`) and bumps `attempt`,
the fencing token. Every later write of the worker (a recorded piece of work, a status change) is made only
while `attempt` is still its own, so a worker that lost its claim (lease expired, another worker took over,
the row was deleted) cannot write any more.

`LeasedRow` names the tables that hold leased work: each has `id`, `seq`, `status` and the three lease
columns. (A training job is claimed differently, with fairness between organizations: db/repositories.py.)
"""

from __future__ import annotations

import time
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, CursorResult, Update, or_, select, update
from sqlalchemy.orm import Session

from openft.db.tables import BatchRow, EvalRunRow

LeasedRow = TypeVar("LeasedRow", BatchRow, EvalRunRow)


def unclaimed(table: type[LeasedRow], now: float) -> ColumnElement[bool]:
    """Nobody holds a live lease on the row (never claimed, handed back, or its holder stopped renewing)."""
    return or_(table.lease_expires_at.is_(None), table.lease_expires_at < now)


def has_claimable(session: Session, table: type[LeasedRow], working: tuple[str, ...]) -> bool:
    """Whether a claim would find something: a plain read, so a worker loop that mostly finds nothing needs
    no write lock for that."""
    stmt = select(table.id).where(table.status.in_(working), unclaimed(table, time.time())).limit(1)
    return session.scalar(stmt) is not None


def claim(
    session: Session, table: type[LeasedRow], working: tuple[str, ...], *, worker_id: str, lease_seconds: float
) -> LeasedRow | None:
    """Take the oldest row in one of the `working` statuses that nobody holds a live lease on (`FOR UPDATE
    SKIP LOCKED` on PostgreSQL, so workers claiming at once skip each other's pick; SQLite's write lock makes
    the select-then-update atomic). The row as claimed, or None."""
    now = time.time()
    row_id = session.scalar(
        select(table.id)
        .where(table.status.in_(working), unclaimed(table, now))
        .order_by(table.seq)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if row_id is None:
        return None
    result = _update(
        session,
        update(table)
        .where(table.id == row_id, table.status.in_(working), unclaimed(table, now))
        .values(worker_id=worker_id, lease_expires_at=now + lease_seconds, attempt=table.attempt + 1),
    )
    if result.rowcount != 1:
        return None
    session.flush()
    return session.scalar(select(table).where(table.id == row_id).execution_options(populate_existing=True))


def renew(session: Session, table: type[LeasedRow], row_id: str, attempt: int, lease_seconds: float) -> bool:
    """Extend the lease of claim `attempt`; False when the claim is lost (the row is gone or claimed again)."""
    return set_fenced(session, table, row_id, attempt, lease_expires_at=time.time() + lease_seconds)


def set_fenced(
    session: Session,
    table: type[LeasedRow],
    row_id: str,
    attempt: int,
    *,
    only_status: tuple[str, ...] | None = None,
    **values: Any,
) -> bool:
    """Change the row only while the claim `attempt` is still the holder's (and, given `only_status`, its
    status one of them); whether it was changed."""
    stmt = update(table).where(table.id == row_id, table.attempt == attempt)
    if only_status is not None:
        stmt = stmt.where(table.status.in_(only_status))
    return _update(session, stmt.values(**values)).rowcount == 1


def holds(session: Session, table: type[LeasedRow], row_id: str, attempt: int) -> bool:
    """Whether `attempt` still holds the row, locking it (PostgreSQL) until the transaction ends, so what is
    recorded in the same transaction is recorded under a live claim."""
    return session.scalar(select(table.attempt).where(table.id == row_id).with_for_update()) == attempt


def _update(session: Session, stmt: Update) -> CursorResult[Any]:
    return cast("CursorResult[Any]", session.execute(stmt))
