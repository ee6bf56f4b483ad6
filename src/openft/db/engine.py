"""Engines and sessions for SQLite (default) and PostgreSQL, through one code path.

SQLite runs in WAL mode with a long busy timeout, and every transaction starts with
`BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail at once with
"database is locked" when another connection wrote in between (the busy handler is not used for
lock upgrades), so we take the write lock up front. Transactions here are short, so this costs
little and makes concurrent API requests, worker threads and separate worker processes safe.

The exception is `read_only_sessions`: the workers' frequent look-arounds ("is there work? did a
user pause my job?") and the API's reads (jobs, events, checkpoints, the key lookup on every request)
only read, and taking the single write lock for each of them starves the writers that matter and makes
every read wait behind any write. Those start with a plain (deferred) BEGIN, which in WAL mode reads a
snapshot without blocking or waiting for anyone. They must not write.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "openft_read_only"


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    """An engine for `url`. `sqlite_busy_timeout_ms`: how long a SQLite statement waits for another connection's
    lock before failing with "database is locked" (which the worker then retries, db/retry.py)."""
    if url.startswith("sqlite"):
        timeout = sqlite_busy_timeout_ms / 1000
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": timeout})
        _configure_sqlite(engine, sqlite_busy_timeout_ms)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def read_only_sessions(sessions: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions on the same database for reads only (see the module docstring); the same on PostgreSQL."""
    engine: Engine = sessions.kw["bind"]
    return sessionmaker(bind=engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False)
