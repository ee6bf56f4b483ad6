"""Schema migrations with Alembic, applied by `openft serve` (and `openft db upgrade`) on start.

The scripts live in the package (`openft/db/migrations`), so an installed openft can migrate any
database it is pointed at without an alembic.ini. On PostgreSQL an advisory lock makes concurrent
starts (a server and several workers) migrate one at a time. The lock is keyed by the schema too: the
databases of different deployments (or test runs) that share one PostgreSQL database in separate schemas
do not wait for each other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x0F7_D8
_PG_LOCK = "(:key, hashtext(coalesce(current_schema(), '')))"
"""The two-int4 advisory-lock form: openft's key and the schema being migrated."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = alembic_config()
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_lock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_unlock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
                connection.commit()
