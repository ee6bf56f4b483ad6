"""continued fine-tuning: a job records its base model and the weights it starts from

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.add_column(sa.Column("base_model", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("parent_weights", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch_op:
        batch_op.drop_column("parent_weights")
        batch_op.drop_column("base_model")
