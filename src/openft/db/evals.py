"""Queries of the Evals API's tables (db/tables.py `EvalRow`, `EvalRunRow`, `EvalRunItemRow`).

A run is leased work like a batch (db/leases.py): a worker claims it and bumps `attempt`, the fencing token,
and every later write of the worker (a graded item, a status change) is made only while `attempt` is still its
own, so a worker that lost its claim (lease expired, another worker took over, the run was deleted) cannot
write any more.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openft.db import leases
from openft.db.tables import EvalRow, EvalRunItemRow, EvalRunRow

WORKING_STATUSES = ("queued", "in_progress")
"""Statuses a worker has work to do in: a run in one of them is claimable when nobody holds it."""
FINAL_STATUSES = ("completed", "failed", "canceled")


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


def has_claimable_run(session: Session) -> bool:
    """A read before the claim: most turns find nothing, and then need no write lock."""
    return leases.has_claimable(session, EvalRunRow, WORKING_STATUSES)


def claim_run(session: Session, *, worker_id: str, lease_seconds: float) -> EvalRunRow | None:
    """Take the oldest run with work left that nobody holds a live lease on (db/leases.py `claim`)."""
    return leases.claim(session, EvalRunRow, WORKING_STATUSES, worker_id=worker_id, lease_seconds=lease_seconds)


def renew_lease(session: Session, run_id: str, attempt: int, lease_seconds: float) -> str | None:
    """Extend this worker's lease; the run's status now (`canceled` once the user cancelled it), or None when
    the claim is lost (another worker took it, or the run was deleted)."""
    if not leases.renew(session, EvalRunRow, run_id, attempt, lease_seconds):
        return None
    return session.scalar(select(EvalRunRow.status).where(EvalRunRow.id == run_id))


def set_fenced(session: Session, run_id: str, attempt: int, *, only_status: tuple[str, ...], **values: Any) -> bool:
    """Change the run only while the claim `attempt` is still the holder's and its status one of `only_status`
    (a cancelled run stays cancelled); whether it was changed."""
    return leases.set_fenced(session, EvalRunRow, run_id, attempt, only_status=only_status, **values)


def release(session: Session, run_id: str, attempt: int) -> None:
    """Hand the claim back (the worker stops): another worker may take the run at once."""
    leases.set_fenced(session, EvalRunRow, run_id, attempt, worker_id=None, lease_expires_at=None)


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
    leases.set_fenced(
        session,
        EvalRunRow,
        run_id,
        attempt,
        result_counts=counts,
        per_testing_criteria_results=criteria,
        per_model_usage=usage,
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
