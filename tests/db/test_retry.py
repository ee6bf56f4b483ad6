"""What counts as a transient database error (db/retry.py), told from real errors of real databases, and the
retry loop's budget."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError

from openft.db.engine import make_engine
from openft.db.migrate import upgrade
from openft.db.retry import DatabaseUnavailable, is_transient, retry_transient


def _locked_error(tmp_path: Path) -> OperationalError:
    """The error a write meets while another connection holds SQLite's write lock past the busy timeout."""
    engine = make_engine(f"sqlite:///{tmp_path / 'openft.db'}", sqlite_busy_timeout_ms=50)
    upgrade(engine)
    holder = sqlite3.connect(tmp_path / "openft.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(OperationalError) as caught, engine.begin() as connection:
            connection.execute(text("DELETE FROM organizations"))
        return caught.value
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()


def test_a_locked_database_is_transient_a_constraint_is_not(tmp_path: Path) -> None:
    assert is_transient(_locked_error(tmp_path))
    engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(engine)
    with pytest.raises(IntegrityError) as caught, engine.begin() as connection:
        connection.execute(text("INSERT INTO organizations (id, name, created_at) VALUES ('o', 'n', 1), ('o', 'm', 1)"))
    engine.dispose()
    assert not is_transient(caught.value)
    assert not is_transient(ValueError("database is locked"))


def test_retries_until_it_works_then_gives_up_after_the_budget(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path)
    calls: list[int] = []
    slept: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise locked
        return "done"

    assert retry_transient(flaky, 60, sleep=slept.append) == "done"
    assert len(calls) == 4 and slept == [0.05, 0.1, 0.2]

    def always() -> None:
        raise locked

    with pytest.raises(DatabaseUnavailable):
        retry_transient(always, 0.3, sleep=lambda _s: None)
    with pytest.raises(IntegrityError):  # not transient: at once, no retry
        retry_transient(lambda: (_ for _ in ()).throw(IntegrityError("x", {}, Exception("unique"))), 60)
