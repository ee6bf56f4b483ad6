"""Queries on model aliases (tables.ModelAliasRow): one organization's other names for its models."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from openft.db.tables import JobRow, ModelAliasRow

IMPORTED_MODEL_KEY = "openft_import_model"
"""Job metadata naming the vendor model a job replaces (`openft import` sets it): when the job succeeds, that
name becomes an alias of the new fine-tuned model in the job's organization (`alias_imported_model`)."""


def get_alias(session: Session, org_id: str, name: str) -> ModelAliasRow | None:
    stmt = select(ModelAliasRow).where(ModelAliasRow.organization_id == org_id, ModelAliasRow.name == name)
    return session.scalars(stmt).one_or_none()


def list_aliases(session: Session, org_id: str | None) -> Sequence[ModelAliasRow]:
    stmt = select(ModelAliasRow).order_by(ModelAliasRow.organization_id, ModelAliasRow.name)
    if org_id is not None:
        stmt = stmt.where(ModelAliasRow.organization_id == org_id)
    return session.scalars(stmt).all()


def set_alias(session: Session, org_id: str, name: str, target: str) -> ModelAliasRow:
    """Create the alias, or point an existing one at a new target (the newest decision wins)."""
    now = int(time.time())
    row = get_alias(session, org_id, name)
    if row is None:
        row = ModelAliasRow(organization_id=org_id, name=name, target=target, created_at=now, updated_at=now)
        session.add(row)
    else:
        row.target, row.updated_at = target, now
    session.flush()
    return row


def delete_alias(session: Session, org_id: str, name: str) -> bool:
    stmt = delete(ModelAliasRow).where(ModelAliasRow.organization_id == org_id, ModelAliasRow.name == name)
    return cast("CursorResult[Any]", session.execute(stmt)).rowcount == 1


def alias_imported_model(session: Session, job_id: str) -> str | None:
    """Point the vendor model a succeeded job replaces (its `openft_import_model` metadata) at the job's
    fine-tuned model, in the same transaction as the success, so the alias exists exactly when the model does.
    Returns the alias name, if one was set."""
    job = session.scalars(select(JobRow).where(JobRow.id == job_id)).one_or_none()
    if job is None or not job.fine_tuned_model:
        return None
    old = (job.metadata_ or {}).get(IMPORTED_MODEL_KEY)
    if not isinstance(old, str) or not old.strip() or old == job.fine_tuned_model:
        return None
    set_alias(session, job.organization_id, old, job.fine_tuned_model)
    return old
