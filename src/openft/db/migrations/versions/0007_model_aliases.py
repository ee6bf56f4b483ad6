"""model-name aliases per organization

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_aliases",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("target", sa.String(length=600), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("organization_id", "name", name="uq_model_aliases_org_name"),
    )
    op.create_index("ix_model_aliases_organization_id", "model_aliases", ["organization_id"])


def downgrade() -> None:
    op.drop_index("ix_model_aliases_organization_id", table_name="model_aliases")
    op.drop_table("model_aliases")
