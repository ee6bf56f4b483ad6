"""responses: background responses' state and the lease of the server that runs one

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("responses", sa.Column("background_status", sa.String(length=16), nullable=True))
    op.add_column("responses", sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("background_status")
