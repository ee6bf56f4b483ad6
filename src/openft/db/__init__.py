"""Persistence: SQLAlchemy tables, repositories and Alembic migrations (SQLite by default, PostgreSQL by URL).

The database is the source of truth for every job's state; files and checkpoints on disk become
visible to users only through rows written after the bytes are durable.
"""
