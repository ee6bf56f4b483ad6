"""Queries of the Responses API's stored responses (services/responses.py), always within one organization
(the lease renewal of a background response's own runner goes by id: it made the row)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from openft.db.tables import ResponseRow


def get_response(session: Session, org_id: str, response_id: str) -> ResponseRow | None:
    """A stored response of `org_id`; another organization's is not found, like one never stored."""
    return session.scalar(
        select(ResponseRow).where(ResponseRow.id == response_id, ResponseRow.organization_id == org_id)
    )


def delete_response(session: Session, org_id: str, response_id: str) -> bool:
    """Delete a stored response of `org_id`; False when there was none."""
    stmt = delete(ResponseRow).where(ResponseRow.id == response_id, ResponseRow.organization_id == org_id)
    result = cast("CursorResult[Any]", session.execute(stmt))
    return result.rowcount == 1


OPEN = ("queued", "in_progress")
"""A background response's statuses before it ends."""


def update_background(
    session: Session,
    org_id: str,
    response_id: str,
    response: dict[str, Any],
    *,
    only_from: tuple[str, ...],
    lease_expires_at: int | None = None,
) -> bool:
    """Replace a background response (and its status) if its status is still one of `only_from`: the fence
    that keeps a cancelled response cancelled when its generation ends a moment later, and a finished one
    from being failed by a late expiry. False when the fence held."""
    stmt = (
        update(ResponseRow)
        .where(
            ResponseRow.id == response_id,
            ResponseRow.organization_id == org_id,
            ResponseRow.background_status.in_(only_from),
        )
        .values(response=response, background_status=response["status"], lease_expires_at=lease_expires_at)
    )
    result = cast("CursorResult[Any]", session.execute(stmt))
    return result.rowcount == 1


def renew_lease(session: Session, response_id: str, until: int) -> str | None:
    """Extend a running background response's lease; return its status now (None once deleted), which tells the
    runner whether it was cancelled meanwhile, possibly through another server."""
    session.execute(
        update(ResponseRow)
        .where(ResponseRow.id == response_id, ResponseRow.background_status.in_(OPEN))
        .values(lease_expires_at=until)
    )
    return session.scalar(select(ResponseRow.background_status).where(ResponseRow.id == response_id))
