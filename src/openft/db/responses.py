"""Queries of the Responses API's stored responses (services/responses.py), always within one organization."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
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
