"""Telling a database hiccup from a real error, and riding the hiccup out with bounded backoff.

A worker writes to the database all the time (trainer messages, heartbeats, checkpoints). A moment when
the database cannot answer — SQLite's write lock held longer than the busy timeout (a backup, a long
admin transaction), a PostgreSQL restart or fail-over, a killed backend, a serialization failure or a
deadlock victim — says nothing about the job, so it must not fail the job. `retry_transient` runs one
transaction again, from scratch, until it commits or `budget_seconds` (`OPENFT_DB_RETRY_SECONDS`, 60 s by
default) have passed: backoff doubles from 0.05 s to at most 2 s between tries. Every try is a new
transaction, so a try that failed left nothing behind; a try whose COMMIT reached the server but whose
answer was lost is the one case that could write twice, and the callers guard against it (runner.py: each
write carries the ids of the rows it adds and does nothing when they are already there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_BACKOFF_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 2.0
SQLITE_TRANSIENT = ("database is locked", "database table is locked", "database schema has changed")
PG_TRANSIENT_SQLSTATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown (pg_terminate_backend, a restart)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, recovery)
    "53300",  # too_many_connections
}


class DatabaseUnavailable(Exception):
    """The database kept failing with transient errors for the whole retry budget."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` is a hiccup of the database rather than a problem with what was asked of it."""
    if isinstance(error, (sa_exc.DisconnectionError, sa_exc.TimeoutError)):
        return True
    if not isinstance(error, sa_exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate in PG_TRANSIENT_SQLSTATES or sqlstate.startswith("08")):
        return True
    if isinstance(error, sa_exc.OperationalError):
        text = str(error.orig).lower()
        if any(marker in text for marker in SQLITE_TRANSIENT):
            return True
        # psycopg's connection-level failures carry no SQLSTATE
        return sqlstate is None and any(word in text for word in ("connection", "server closed", "terminat"))
    return False


def retry_transient(
    work: Callable[[], T],
    budget_seconds: float,
    *,
    what: str = "database write",
    sleep: Callable[[float], None] = time.sleep,
    give_up: Callable[[], bool] = lambda: False,
) -> T:
    """`work()` (one whole transaction), tried again after each transient error until `budget_seconds`
    have passed; then `DatabaseUnavailable`. Other errors propagate at once. `give_up()` ends the wait early
    (the run was cancelled or its claim lost)."""
    deadline = time.monotonic() + budget_seconds
    backoff = FIRST_BACKOFF_SECONDS
    tries = 0
    while True:
        try:
            return work()
        except Exception as error:
            if not is_transient(error):
                raise
            tries += 1
            if time.monotonic() + backoff > deadline or give_up():
                raise DatabaseUnavailable(f"{what} failed {tries} times over {budget_seconds:g} s: {error}") from error
            if tries == 1:
                log.warning(
                    "%s hit a transient database error; retrying for up to %g s: %s", what, budget_seconds, error
                )
            sleep(backoff)
            backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
