"""the database's identity, which its data folder records too (a folder is bound to one database)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import time
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "database_identity",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
    )
    # made here, so that every database has exactly one from its first migration on: migrations run one at
    # a time (an advisory lock on PostgreSQL, the write lock on SQLite), so concurrent first starts agree
    op.bulk_insert(table, [{"id": f"db-{uuid.uuid4().hex}", "created_at": int(time.time())}])


def downgrade() -> None:
    op.drop_table("database_identity")
