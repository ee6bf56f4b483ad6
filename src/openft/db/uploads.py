"""Queries of the Uploads API (services/uploads.py): uploads, their parts, and the status changes.

A status changes only by `change_status`, a compare-and-set UPDATE from `pending`: completion, cancel and
the expiry sweep may race (two servers, a client retrying), and exactly one of them wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.orm import Session

from openft.db.tables import UploadPartRow, UploadRow

PENDING = "pending"


def get_upload(session: Session, org_id: str | None, upload_id: str, *, lock: bool = False) -> UploadRow | None:
    """An upload by id, of `org_id` (None: any organization, for admin keys). `lock` takes its row until the
    transaction ends (PostgreSQL `FOR UPDATE`; SQLite's write transactions are serialized anyway), so a part
    being recorded and a cancel or completion of the same upload cannot interleave."""
    stmt = select(UploadRow).where(UploadRow.id == upload_id)
    if org_id is not None:
        stmt = stmt.where(UploadRow.organization_id == org_id)
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return session.scalar(stmt)


def parts_bytes(session: Session, upload_id: str) -> int:
    """The bytes of every part stored for the upload so far."""
    total = session.scalar(
        select(func.coalesce(func.sum(UploadPartRow.bytes), 0)).where(UploadPartRow.upload_id == upload_id)
    )
    return int(total or 0)


def parts_by_id(session: Session, upload_id: str, part_ids: Sequence[str]) -> dict[str, UploadPartRow]:
    """Which of `part_ids` are parts of this upload (a part of another upload is not found)."""
    found: dict[str, UploadPartRow] = {}
    for start in range(0, len(part_ids), 500):
        chunk = part_ids[start : start + 500]
        stmt = select(UploadPartRow).where(UploadPartRow.upload_id == upload_id, UploadPartRow.id.in_(chunk))
        found.update((row.id, row) for row in session.scalars(stmt))
    return found


def delete_parts(session: Session, upload_id: str) -> list[str]:
    """Delete the upload's part rows; their ids (the caller deletes their blobs once this commits)."""
    ids = list(session.scalars(select(UploadPartRow.id).where(UploadPartRow.upload_id == upload_id)))
    session.execute(delete(UploadPartRow).where(UploadPartRow.upload_id == upload_id))
    return ids


def change_status(session: Session, upload_id: str, status: str, *, file_id: str | None = None) -> bool:
    """Move a pending upload to `status` (recording its file when completed); False when it is not pending."""
    values: dict[str, object] = {"status": status}
    if file_id is not None:
        values["file_id"] = file_id
    stmt = update(UploadRow).where(UploadRow.id == upload_id, UploadRow.status == PENDING).values(**values)
    result = cast("CursorResult[Any]", session.execute(stmt))
    return result.rowcount == 1


def due_for_expiry(session: Session, now: int, limit: int = 500) -> list[str]:
    """Pending uploads whose time is up (oldest first, at most `limit`)."""
    stmt = (
        select(UploadRow.id)
        .where(UploadRow.status == PENDING, UploadRow.expires_at <= now)
        .order_by(UploadRow.expires_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))
