"""Checkpoint permissions: an organization shares one of its checkpoints (by its `ft:…:ckpt-step-N` name or
`ftckpt-…` id) with projects of other organizations, whose keys may then chat with it and fine-tune from it
(name resolution in services/models.py honours the grants).

Only the owning organization's keys (and admin keys) see or change a checkpoint's permissions; to everyone
else the checkpoint does not exist (404), as with every other tenant's object.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openft.db import checkpoint_permissions as permissions_db
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import CheckpointPermissionRow, CheckpointRow
from openft.errors import NotFound
from openft.protocol.checkpoint_permissions import (
    CheckpointPermission,
    CheckpointPermissionCreate,
    CheckpointPermissionDeleted,
    CheckpointPermissionList,
)


def _wire(row: CheckpointPermissionRow) -> CheckpointPermission:
    return CheckpointPermission(id=row.id, created_at=row.created_at, project_id=row.project_id)


class CheckpointPermissionService:
    def __init__(self, sessions: sessionmaker[Session]):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)

    @staticmethod
    def _checkpoint(session: Session, org_id: str | None, name: str) -> tuple[CheckpointRow, str]:
        """The caller's checkpoint by name or id, with its organization; 404 for anyone else's."""
        column = CheckpointRow.id if name.startswith("ftckpt-") else CheckpointRow.fine_tuned_model_checkpoint
        checkpoint = session.scalar(select(CheckpointRow).where(column == name))
        job = repo.get_job(session, org_id, checkpoint.job_id) if checkpoint is not None else None
        if checkpoint is None or job is None or job.model_deleted_at is not None:
            raise NotFound(f"No such fine-tuned model checkpoint: {name}", param="fine_tuned_model_checkpoint")
        return checkpoint, job.organization_id

    def create(self, org_id: str | None, name: str, body: CheckpointPermissionCreate) -> CheckpointPermissionList:
        with self._sessions.begin() as session:
            checkpoint, owner = self._checkpoint(session, org_id, name)
            rows = permissions_db.grant(session, checkpoint.id, owner, body.project_ids)
            data = [_wire(row) for row in rows]
        return CheckpointPermissionList(
            data=data, has_more=False, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
        )

    def list(
        self,
        org_id: str | None,
        name: str,
        *,
        project_id: str | None,
        after: str | None,
        limit: int,
        ascending: bool,
    ) -> CheckpointPermissionList:
        with self._reads.begin() as session:
            checkpoint, _ = self._checkpoint(session, org_id, name)
            page = permissions_db.list_permissions(
                session, checkpoint.id, project_id=project_id, after=after, limit=limit, newest_first=not ascending
            )
            data = [_wire(row) for row in page.data]
        return CheckpointPermissionList(
            data=data,
            has_more=page.has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def delete(self, org_id: str | None, name: str, permission_id: str) -> CheckpointPermissionDeleted:
        with self._sessions.begin() as session:
            checkpoint, _ = self._checkpoint(session, org_id, name)
            if not permissions_db.revoke(session, checkpoint.id, permission_id):
                raise NotFound(f"No such checkpoint permission: {permission_id}", param="permission_id")
        return CheckpointPermissionDeleted(id=permission_id)
