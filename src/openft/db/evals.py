"""Queries of the Evals API's tables (db/tables.py `EvalRow`, `EvalRunRow`, `EvalRunItemRow`).

A run is claimed like a batch (db/batches.py): an atomic UPDATE that takes a run nobody holds a live lease
on, gives it to one worker and bumps `attempt`, the fencing token. Every later write of the worker (a graded
item, a status change) is made only while `attempt` is still its own, so a worker that lost its claim (lease
expired, another worker took over, the run was deleted) cannot write any more.
"""

from __future__ import annotations

import time
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, Update, delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openft.db.tables import EvalRow, EvalRunItemRow, EvalRunRow

WORKING_STATUSES = ("queued", "in_progress")
"""Statuses a worker has work to do in: a run in one of them is claimable when nobody holds it."""
FINAL_STATUSES = ("completed", "failed", "canceled")


def _update(session: Session, stmt: Update) -> CursorResult[Any]:
    return cast("CursorResult[Any]", session.execute(stmt))


def _page(
    session: Session, stmt: Any, model: Any, anchor_where: Any, *, after: str | None, limit: int, ascending: bool
) -> tuple[list[Any], bool]:
    """One page ordered by `seq` (`after`: the id of the previous page's last object), and whether more follow."""
    if after is not None:
        anchor = session.scalar(select(model.seq).where(model.id == after, anchor_where))
        if anchor is not None:
            stmt = stmt.where(model.seq > anchor if ascending else model.seq < anchor)
    order = model.seq.asc() if ascending else model.seq.desc()
    rows = list(session.scalars(stmt.order_by(order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


# evals -----------------------------------------------------------------------------------------------
def get_eval(session: Session, org_id: str, eval_id: str) -> EvalRow | None:
    return session.scalar(select(EvalRow).where(EvalRow.id == eval_id, EvalRow.organization_id == org_id))


def list_evals(
    session: Session, org_id: str, *, after: str | None, limit: int, ascending: bool
) -> tuple[list[EvalRow], bool]:
    where = EvalRow.organization_id == org_id
    return _page(session, select(EvalRow).where(where), EvalRow, where, after=after, limit=limit, ascending=ascending)


def delete_eval(session: Session, org_id: str, eval_id: str) -> bool:
    """The eval, its runs and their output items (a worker holding one of its runs finds its claim lost)."""
    if get_eval(session, org_id, eval_id) is None:
        return False
    runs = select(EvalRunRow.id).where(EvalRunRow.eval_id == eval_id)
    session.execute(delete(EvalRunItemRow).where(EvalRunItemRow.run_id.in_(runs)))
    session.execute(delete(EvalRunRow).where(EvalRunRow.eval_id == eval_id))
    session.execute(delete(EvalRow).where(EvalRow.id == eval_id))
    return True


# runs ------------------------------------------------------------------------------------------------
def get_run(session: Session, org_id: str | None, eval_id: str | None, run_id: str) -> EvalRunRow | None:
    stmt = select(EvalRunRow).where(EvalRunRow.id == run_id)
    if org_id is not None:
        stmt = stmt.where(EvalRunRow.organization_id == org_id)
    if eval_id is not None:
        stmt = stmt.where(EvalRunRow.eval_id == eval_id)
    return session.scalar(stmt)


def list_runs(
    session: Session, org_id: str, eval_id: str, *, status: str | None, after: str | None, limit: int, ascending: bool
) -> tuple[list[EvalRunRow], bool]:
    where = (EvalRunRow.organization_id == org_id) & (EvalRunRow.eval_id == eval_id)
    stmt = select(EvalRunRow).where(where)
    if status is not None:
        stmt = stmt.where(EvalRunRow.status == status)
    return _page(session, stmt, EvalRunRow, where, after=after, limit=limit, ascending=ascending)


def delete_run(session: Session, run_id: str) -> None:
    session.execute(delete(EvalRunItemRow).where(EvalRunItemRow.run_id == run_id))
    session.execute(delete(EvalRunRow).where(EvalRunRow.id == run_id))


def _unclaimed(now: float) -> ColumnElement[bool]:
    return or_(EvalRunRow.lease_expires_at.is_(None), EvalRunRow.lease_expires_at < now)


def has_claimable_run(session: Session) -> bool:
    """A read before the claim: most turns find nothing, and then need no write lock."""
    now = time.time()
    stmt = select(EvalRunRow.id).where(EvalRunRow.status.in_(WORKING_STATUSES), _unclaimed(now)).limit(1)
    return session.scalar(stmt) is not None


def claim_run(session: Session, *, worker_id: str, lease_seconds: float) -> EvalRunRow | None:
    """Take the oldest run with work left that nobody holds a live lease on (`FOR UPDATE SKIP LOCKED` on
    PostgreSQL; SQLite's write lock makes the select-then-update atomic)."""
    now = time.time()
    run_id = session.scalar(
        select(EvalRunRow.id)
        .where(EvalRunRow.status.in_(WORKING_STATUSES), _unclaimed(now))
        .order_by(EvalRunRow.seq)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    if run_id is None:
        return None
    result = _update(
        session,
        update(EvalRunRow)
        .where(EvalRunRow.id == run_id, EvalRunRow.status.in_(WORKING_STATUSES), _unclaimed(now))
        .values(worker_id=worker_id, lease_expires_at=now + lease_seconds, attempt=EvalRunRow.attempt + 1),
    )
    if result.rowcount != 1:
        return None
    session.flush()
    return session.scalar(select(EvalRunRow).where(EvalRunRow.id == run_id).execution_options(populate_existing=True))


def renew_lease(session: Session, run_id: str, attempt: int, lease_seconds: float) -> str | None:
    """Extend this worker's lease; the run's status now (`canceled` once the user cancelled it), or None when
    the claim is lost (another worker took it, or the run was deleted)."""
    result = _update(
        session,
        update(EvalRunRow)
        .where(EvalRunRow.id == run_id, EvalRunRow.attempt == attempt)
        .values(lease_expires_at=time.time() + lease_seconds),
    )
    if result.rowcount != 1:
        return None
    return session.scalar(select(EvalRunRow.status).where(EvalRunRow.id == run_id))


def set_fenced(session: Session, run_id: str, attempt: int, *, only_status: tuple[str, ...], **values: Any) -> bool:
    """Change the run only while the claim `attempt` is still the holder's and its status one of `only_status`
    (a cancelled run stays cancelled); whether it was changed."""
    result = _update(
        session,
        update(EvalRunRow)
        .where(EvalRunRow.id == run_id, EvalRunRow.attempt == attempt, EvalRunRow.status.in_(only_status))
        .values(**values),
    )
    return result.rowcount == 1


def release(session: Session, run_id: str, attempt: int) -> None:
    """Hand the claim back (the worker stops): another worker may take the run at once."""
    _update(
        session,
        update(EvalRunRow)
        .where(EvalRunRow.id == run_id, EvalRunRow.attempt == attempt)
        .values(worker_id=None, lease_expires_at=None),
    )


# output items ----------------------------------------------------------------------------------------
def graded_indexes(session: Session, run_id: str) -> set[int]:
    return set(session.scalars(select(EvalRunItemRow.item_index).where(EvalRunItemRow.run_id == run_id)))


def record_items(session: Session, run_id: str, attempt: int, items: list[EvalRunItemRow]) -> bool:
    """Record graded items together under one fencing check, and add them to the run's counts in the same
    transaction; False when the claim is lost (nothing recorded). An item recorded already is skipped.

    Only the counts are read (the row locked on PostgreSQL until the transaction ends), never the run's data
    source, which may hold megabytes of items."""
    run = session.execute(
        select(
            EvalRunRow.attempt,
            EvalRunRow.result_counts,
            EvalRunRow.per_testing_criteria_results,
            EvalRunRow.per_model_usage,
        )
        .where(EvalRunRow.id == run_id)
        .with_for_update()
    ).one_or_none()
    if run is None or run.attempt != attempt:
        return False
    counts = dict(run.result_counts)
    criteria = [dict(c) for c in run.per_testing_criteria_results]
    usage = {name: dict(u) for name, u in run.per_model_usage.items()}
    for item in items:
        try:
            with session.begin_nested():
                session.add(item)
        except IntegrityError:
            continue
        counts["total"] += 1
        counts[{"pass": "passed", "fail": "failed"}.get(item.status, "errored")] += 1
        for tally, result in zip(criteria, item.record.get("results", []), strict=False):
            tally["passed" if result.get("passed") else "failed"] += 1
        for name, used in item.record.get("usage_by_model", {}).items():
            into = usage.setdefault(
                name,
                {
                    "model_name": name,
                    "invocation_count": 0,
                    "prompt_tokens": 0,
                    "completion_tokens": 0,
                    "total_tokens": 0,
                    "cached_tokens": 0,
                },
            )
            for key, value in used.items():
                into[key] = into.get(key, 0) + value
    _update(
        session,
        update(EvalRunRow)
        .where(EvalRunRow.id == run_id, EvalRunRow.attempt == attempt)
        .values(result_counts=counts, per_testing_criteria_results=criteria, per_model_usage=usage),
    )
    return True


def get_item(session: Session, run_id: str, item_id: str) -> EvalRunItemRow | None:
    return session.scalar(select(EvalRunItemRow).where(EvalRunItemRow.run_id == run_id, EvalRunItemRow.id == item_id))


def list_items(
    session: Session, run_id: str, *, status: str | None, after: str | None, limit: int, ascending: bool
) -> tuple[list[EvalRunItemRow], bool]:
    """Items in the data source's order (`asc`) or the reverse; `after` an output item id."""
    stmt = select(EvalRunItemRow).where(EvalRunItemRow.run_id == run_id)
    if status is not None:
        stmt = stmt.where(EvalRunItemRow.status == status)
    if after is not None:
        anchor = session.scalar(
            select(EvalRunItemRow.item_index).where(EvalRunItemRow.run_id == run_id, EvalRunItemRow.id == after)
        )
        if anchor is not None:
            stmt = stmt.where(EvalRunItemRow.item_index > anchor if ascending else EvalRunItemRow.item_index < anchor)
    order = EvalRunItemRow.item_index.asc() if ascending else EvalRunItemRow.item_index.desc()
    rows = list(session.scalars(stmt.order_by(order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
