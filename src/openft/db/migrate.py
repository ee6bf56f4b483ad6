"""Schema migrations with Alembic, applied by `openft serve` (and `openft db upgrade`) on start.

The scripts live in the package (`openft/db/migrations`), so an installed openft can migrate any
database it is pointed at without an alembic.ini. On PostgreSQL an advisory lock makes concurrent
starts (a server and several workers) migrate one at a time. The lock is keyed by the schema too: the
databases of different deployments (or test runs) that share one PostgreSQL database in separate schemas
do not wait for each other.

On SQLite, Alembic changes a table by rebuilding it (create a copy, copy the rows, drop the original,
rename the copy). With `PRAGMA foreign_keys=ON` (which every openft connection sets, db/engine.py) the
DROP of `fine_tuning_jobs` cascades to its events and checkpoints: a migration deleted rows. So migrations
run on a connection with foreign keys off (SQLite only honours the pragma outside a transaction, hence on
the raw connection before Alembic begins), and `PRAGMA foreign_key_check` runs afterwards: a migration
that left a dangling reference fails loudly instead of leaving a database that lies. PostgreSQL alters
tables in place and enforces its foreign keys all along.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_LOCK_KEY = 0x0F7_D8
_PG_LOCK = "(:key, hashtext(coalesce(current_schema(), '')))"
"""The two-int4 advisory-lock form: openft's key and the schema being migrated."""


class MigrationIntegrityError(RuntimeError):
    """A migration left rows that reference rows which do not exist (PRAGMA foreign_key_check)."""


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    _migrate(engine, lambda config: command.upgrade(config, revision))


def downgrade(engine: Engine, revision: str) -> None:
    """Back to `revision` (operators and tests; `openft serve` only ever upgrades)."""
    _migrate(engine, lambda config: command.downgrade(config, revision))


def _migrate(engine: Engine, run: Callable[[Config], None]) -> None:
    config = alembic_config()
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_lock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
            connection.commit()
        try:
            with _foreign_keys_off(connection):
                config.attributes["connection"] = connection
                run(config)
                connection.commit()
                check_foreign_keys(connection)
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_unlock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
                connection.commit()


@contextmanager
def _foreign_keys_off(connection: Connection) -> Iterator[None]:
    """SQLite: foreign keys off for the migration (see the module docstring), back on before the connection
    returns to the pool. The pragma is a no-op inside a transaction, so it goes to the raw connection, which
    runs in autocommit mode (db/engine.py issues BEGIN itself)."""
    if connection.dialect.name != "sqlite":
        yield
        return
    if connection.in_transaction():
        connection.commit()
    raw = connection.connection.driver_connection
    assert raw is not None
    raw.execute("PRAGMA foreign_keys=OFF")
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        raw.execute("PRAGMA foreign_keys=ON")


def check_foreign_keys(connection: Connection) -> None:
    """Raise `MigrationIntegrityError` naming the first dangling references (SQLite; PostgreSQL enforces them)."""
    if connection.dialect.name != "sqlite":
        return
    problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
    connection.commit()
    if problems:
        shown = "; ".join(f"{table} rowid {rowid} → {parent}" for table, rowid, parent, _fk in problems[:10])
        raise MigrationIntegrityError(
            f"The database has {len(problems)} rows whose foreign key points to no row after migrating: {shown}. "
            "Restore the backup taken before the upgrade and report this."
        )
