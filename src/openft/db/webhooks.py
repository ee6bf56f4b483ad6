"""Queries of webhook endpoints and their delivery outbox (services/webhooks.py uses them).

`enqueue_job_event` is called by db/repositories.py with the status change itself, in the same transaction:
an event row exists exactly when its transition committed, so neither a crash nor a restart can lose one or
invent one. Deliverers claim due rows with a lease (`next_attempt_at` pushed past the try's timeout and
`attempts` bumped as a fencing token), the way workers claim jobs: `FOR UPDATE SKIP LOCKED` on PostgreSQL, the
write lock of `BEGIN IMMEDIATE` on SQLite, so with several servers on one database each try is made by one.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

from openft import ids
from openft.db.tables import JobRow, WebhookAttemptRow, WebhookDeliveryRow, WebhookEndpointRow
from openft.domain.job_states import JobStatus

EVENT_TYPES: dict[JobStatus, str] = {
    JobStatus.SUCCEEDED: "fine_tuning.job.succeeded",
    JobStatus.FAILED: "fine_tuning.job.failed",
    JobStatus.CANCELLED: "fine_tuning.job.cancelled",
    JobStatus.PAUSED: "fine_tuning.job.paused",  # openft's extension: OpenAI has no paused jobs
}
"""The job statuses that send an event, and the event's `type`."""

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


def new_event_id() -> str:
    """`evt_` and 32 hex digits, shaped like OpenAI's event ids."""
    return "evt_" + secrets.token_hex(16)


def event_body(event_id: str, event_type: str, job_id: str, created_at: int) -> str:
    """The JSON OpenAI sends for a fine-tuning job event (compact: the signature covers these exact bytes)."""
    payload = {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": {"id": job_id}}
    return json.dumps(payload, separators=(",", ":"))


def enqueue_job_event(session: Session, job_id: str, status: JobStatus) -> int:
    """Queue the event of `job_id` reaching `status` for each endpoint of its organization that wants it, in the
    caller's transaction; returns how many rows were added. One indexed read when the organization has none."""
    event_type = EVENT_TYPES.get(status)
    if event_type is None:
        return 0
    endpoints = session.execute(
        select(WebhookEndpointRow.id, WebhookEndpointRow.event_types)
        .join(JobRow, JobRow.organization_id == WebhookEndpointRow.organization_id)
        .where(JobRow.id == job_id)
        .order_by(WebhookEndpointRow.seq)
    ).all()
    wanted = [endpoint_id for endpoint_id, types in endpoints if event_type in (types or [])]
    if not wanted:
        return 0
    now = time.time()
    event_id = new_event_id()
    body = event_body(event_id, event_type, job_id, int(now))
    for endpoint_id in wanted:
        session.add(
            WebhookDeliveryRow(
                id=ids.new_id("whdel"),
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type=event_type,
                job_id=job_id,
                body=body,
                created_at=int(now),
                status=PENDING,
                attempts=0,
                next_attempt_at=now,
            )
        )
    return len(wanted)


# Endpoints ------------------------------------------------------------------------------------


def add_endpoint(session: Session, row: WebhookEndpointRow) -> None:
    session.add(row)
    session.flush()


def list_endpoints(session: Session, org_id: str | None = None) -> Sequence[WebhookEndpointRow]:
    stmt = select(WebhookEndpointRow).order_by(WebhookEndpointRow.seq)
    if org_id is not None:
        stmt = stmt.where(WebhookEndpointRow.organization_id == org_id)
    return session.scalars(stmt).all()


def get_endpoint(session: Session, endpoint_id: str) -> WebhookEndpointRow | None:
    return session.scalar(select(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id))


def delete_endpoint(session: Session, endpoint_id: str) -> bool:
    """Remove an endpoint with its deliveries and their attempts (nothing more is sent to it); False if none."""
    delivery_ids = select(WebhookDeliveryRow.id).where(WebhookDeliveryRow.endpoint_id == endpoint_id)
    session.execute(delete(WebhookAttemptRow).where(WebhookAttemptRow.delivery_id.in_(delivery_ids)))
    session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.endpoint_id == endpoint_id))
    result = session.execute(delete(WebhookEndpointRow).where(WebhookEndpointRow.id == endpoint_id))
    return bool(getattr(result, "rowcount", 0))


# Deliveries -----------------------------------------------------------------------------------


def list_deliveries(
    session: Session, *, org_id: str | None = None, limit: int = 100
) -> list[tuple[WebhookDeliveryRow, WebhookEndpointRow]]:
    """The newest `limit` deliveries (of one organization's endpoints, or of all), newest first."""
    stmt = select(WebhookDeliveryRow, WebhookEndpointRow).join(
        WebhookEndpointRow, WebhookEndpointRow.id == WebhookDeliveryRow.endpoint_id
    )
    if org_id is not None:
        stmt = stmt.where(WebhookEndpointRow.organization_id == org_id)
    rows = session.execute(stmt.order_by(WebhookDeliveryRow.seq.desc()).limit(limit))
    return [(delivery, endpoint) for delivery, endpoint in rows]


def attempts_of(session: Session, delivery_ids: Sequence[str]) -> dict[str, list[WebhookAttemptRow]]:
    """Each delivery's attempts, oldest first."""
    found: dict[str, list[WebhookAttemptRow]] = {delivery_id: [] for delivery_id in delivery_ids}
    if not delivery_ids:
        return found
    rows = session.scalars(
        select(WebhookAttemptRow)
        .where(WebhookAttemptRow.delivery_id.in_(list(delivery_ids)))
        .order_by(WebhookAttemptRow.seq)
    )
    for row in rows:
        found[row.delivery_id].append(row)
    return found


def prune_finished(session: Session, *, before: int) -> int:
    """Delete delivered and failed deliveries (with their attempts) of events older than `before`; returns how
    many. Pending ones stay whatever their age: they are still owed."""
    finished = (WebhookDeliveryRow.status.in_((DELIVERED, FAILED)), WebhookDeliveryRow.created_at < before)
    old_ids = list(session.scalars(select(WebhookDeliveryRow.id).where(*finished)))
    for start in range(0, len(old_ids), 500):
        chunk = old_ids[start : start + 500]
        session.execute(delete(WebhookAttemptRow).where(WebhookAttemptRow.delivery_id.in_(chunk)))
        session.execute(delete(WebhookDeliveryRow).where(WebhookDeliveryRow.id.in_(chunk)))
    return len(old_ids)


def _due(now: float) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (WebhookDeliveryRow.status == PENDING, WebhookDeliveryRow.next_attempt_at <= now)


def has_due(session: Session, now: float) -> bool:
    """Whether `claim_due` would find a delivery (a cheap read before taking the write lock)."""
    return session.scalar(select(WebhookDeliveryRow.id).where(*_due(now)).limit(1)) is not None


def next_due_at(session: Session) -> float | None:
    """When the earliest pending delivery is due (None: nothing pending)."""
    return session.scalar(
        select(WebhookDeliveryRow.next_attempt_at)
        .where(WebhookDeliveryRow.status == PENDING)
        .order_by(WebhookDeliveryRow.next_attempt_at)
        .limit(1)
    )


@dataclass(frozen=True)
class ClaimedDelivery:
    """What one try needs, read with the claim: the try's number is its fencing token."""

    id: str
    attempt: int
    event_id: str
    body: str
    url: str
    secret: str


def claim_due(session: Session, *, now: float, lease_seconds: float, limit: int) -> list[ClaimedDelivery]:
    """Take up to `limit` due deliveries for one try each: `attempts` + 1, and `next_attempt_at` moved
    `lease_seconds` ahead, so a deliverer that dies mid-try leaves the row to be tried again after the lease.
    Conditional on the row being still due as read: on SQLite the write lock already serializes claimers."""
    due_ids = list(
        session.scalars(
            select(WebhookDeliveryRow.id)
            .where(*_due(now))
            .order_by(WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.seq)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    claimed: list[ClaimedDelivery] = []
    for delivery_id in due_ids:
        result = session.execute(
            update(WebhookDeliveryRow)
            .where(WebhookDeliveryRow.id == delivery_id, *_due(now))
            .values(attempts=WebhookDeliveryRow.attempts + 1, next_attempt_at=now + lease_seconds)
        )
        if getattr(result, "rowcount", 0) != 1:
            continue
        row = session.execute(
            select(WebhookDeliveryRow, WebhookEndpointRow)
            .join(WebhookEndpointRow, WebhookEndpointRow.id == WebhookDeliveryRow.endpoint_id)
            .where(WebhookDeliveryRow.id == delivery_id)
            .execution_options(populate_existing=True)
        ).one()
        delivery, endpoint = row
        claimed.append(
            ClaimedDelivery(
                id=delivery.id,
                attempt=delivery.attempts,
                event_id=delivery.event_id,
                body=delivery.body,
                url=endpoint.url,
                secret=endpoint.secret,
            )
        )
    return claimed


def record_attempt(
    session: Session,
    claim: ClaimedDelivery,
    *,
    attempted_at: float,
    duration_ms: int,
    status_code: int | None,
    error: str | None,
    status: str,
    next_attempt_at: float | None,
) -> bool:
    """Write one try's outcome and the delivery's new state, fenced by the try's number: a deliverer whose lease
    ran out (another one has claimed the row since) records nothing. False then, or when the row is gone."""
    values: dict[str, object] = {"status": status, "last_status_code": status_code, "last_error": error}
    if status == DELIVERED:
        values["delivered_at"] = int(attempted_at)
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    result = session.execute(
        update(WebhookDeliveryRow)
        .where(
            WebhookDeliveryRow.id == claim.id,
            WebhookDeliveryRow.attempts == claim.attempt,
            WebhookDeliveryRow.status == PENDING,
        )
        .values(**values)
    )
    if getattr(result, "rowcount", 0) != 1:
        return False
    session.add(
        WebhookAttemptRow(
            delivery_id=claim.id,
            attempted_at=attempted_at,
            status_code=status_code,
            error=error,
            duration_ms=duration_ms,
        )
    )
    return True
