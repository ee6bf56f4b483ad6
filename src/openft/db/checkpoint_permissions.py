"""Queries on checkpoint permissions (tables.CheckpointPermissionRow): which projects of other organizations
may use a checkpoint."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from openft import ids
from openft.db.repositories import Page, paginate
from openft.db.tables import CheckpointPermissionRow


def grant(
    session: Session, checkpoint_id: str, org_id: str, project_ids: Sequence[str]
) -> list[CheckpointPermissionRow]:
    """One permission per project; a project that already has one keeps it (granting twice is not an error)."""
    now = int(time.time())
    existing = {
        row.project_id: row
        for row in session.scalars(
            select(CheckpointPermissionRow).where(CheckpointPermissionRow.checkpoint_id == checkpoint_id)
        )
    }
    rows = []
    for project_id in dict.fromkeys(project_ids):  # in the order asked, each once
        row = existing.get(project_id)
        if row is None:
            row = CheckpointPermissionRow(
                id=ids.checkpoint_permission_id(),
                checkpoint_id=checkpoint_id,
                organization_id=org_id,
                project_id=project_id,
                created_at=now,
            )
            session.add(row)
        rows.append(row)
    session.flush()
    return rows


def list_permissions(
    session: Session,
    checkpoint_id: str,
    *,
    project_id: str | None,
    after: str | None,
    limit: int,
    newest_first: bool,
) -> Page[CheckpointPermissionRow]:
    stmt = select(CheckpointPermissionRow).where(CheckpointPermissionRow.checkpoint_id == checkpoint_id)
    if project_id is not None:
        stmt = stmt.where(CheckpointPermissionRow.project_id == project_id)
    owner = CheckpointPermissionRow.checkpoint_id == checkpoint_id
    return paginate(
        session, stmt, CheckpointPermissionRow, after=after, limit=limit, newest_first=newest_first, owner=owner
    )


def revoke(session: Session, checkpoint_id: str, permission_id: str) -> bool:
    stmt = delete(CheckpointPermissionRow).where(
        CheckpointPermissionRow.checkpoint_id == checkpoint_id, CheckpointPermissionRow.id == permission_id
    )
    return cast("CursorResult[Any]", session.execute(stmt)).rowcount == 1


def is_shared_with(session: Session, checkpoint_id: str, project_id: str) -> bool:
    stmt = select(CheckpointPermissionRow.seq).where(
        CheckpointPermissionRow.checkpoint_id == checkpoint_id, CheckpointPermissionRow.project_id == project_id
    )
    return session.scalar(stmt.limit(1)) is not None


def shared_with(session: Session, project_id: str) -> set[str]:
    """The checkpoint ids shared with a project (for its model listing)."""
    stmt = select(CheckpointPermissionRow.checkpoint_id).where(CheckpointPermissionRow.project_id == project_id)
    return set(session.scalars(stmt))


def forget_checkpoint(session: Session, checkpoint_id: str) -> None:
    """A deleted checkpoint's permissions go with it (also enforced by the foreign key's ON DELETE CASCADE)."""
    session.execute(delete(CheckpointPermissionRow).where(CheckpointPermissionRow.checkpoint_id == checkpoint_id))
