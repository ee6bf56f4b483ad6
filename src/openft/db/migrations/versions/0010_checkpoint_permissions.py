"""checkpoint permissions: a checkpoint shared with other organizations' projects

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_permissions",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(length=64), nullable=False, unique=True),
        sa.Column(
            "checkpoint_id",
            sa.String(length=64),
            sa.ForeignKey("fine_tuning_job_checkpoints.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("project_id", sa.String(length=160), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("checkpoint_id", "project_id", name="uq_checkpoint_permissions_project"),
    )
    op.create_index("ix_checkpoint_permissions_checkpoint_id", "checkpoint_permissions", ["checkpoint_id"])
    op.create_index("ix_checkpoint_permissions_organization_id", "checkpoint_permissions", ["organization_id"])
    op.create_index("ix_checkpoint_permissions_project_id", "checkpoint_permissions", ["project_id"])


def downgrade() -> None:
    op.drop_table("checkpoint_permissions")
