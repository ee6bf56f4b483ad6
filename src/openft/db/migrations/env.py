"""Alembic environment: runs on the connection `openft.db.migrate.upgrade` hands over."""

from __future__ import annotations

from alembic import context

from openft.db.tables import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTERs
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
