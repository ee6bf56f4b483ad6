"""Database URLs for tests: a fresh SQLite file, or a fresh schema on the local PostgreSQL server.

The PostgreSQL server is at OPENFT_TEST_POSTGRES_URL (default: the one every machine of this
project runs, postgresql+psycopg://postgres@127.0.0.1:5432/test). Each use gets its own schema,
selected through the connection's search_path, so tests never see each other's rows.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, text

POSTGRES_URL = os.environ.get("OPENFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@contextmanager
def postgres_schema_url() -> Iterator[str]:
    schema = f"openft_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def sqlite_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'openft.db'}"


def worker_runs(db: Engine, job_id: str) -> list[str | None]:
    """The worker of each run the job has started (its started / resumed events), oldest first.

    Read from the database: the API does not send an event's `worker_id` to tenants (openft.redact)."""
    query = text(
        "SELECT data FROM fine_tuning_job_events WHERE job_id = :id AND type = 'message' "
        "AND (message LIKE 'Fine-tuning started%' OR message LIKE 'Fine-tuning resumed%') ORDER BY seq"
    )
    with db.connect() as connection:
        rows = connection.execute(query, {"id": job_id}).scalars().all()
    return [(json.loads(data) if isinstance(data, str) else data or {}).get("worker_id") for data in rows]
