"""Migrations on start: concurrent starts on one PostgreSQL schema migrate one at a time, and the lock that
orders them is per schema, so a deployment (or test run) in another schema never waits for this one."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import create_engine, inspect, text

from openft.db.engine import make_engine
from openft.db.migrate import _PG_LOCK, _PG_LOCK_KEY, upgrade
from tests.support.databases import postgres_available, postgres_schema_url

pytestmark = pytest.mark.postgres


@pytest.fixture(autouse=True)
def _needs_postgres() -> None:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at OPENFT_TEST_POSTGRES_URL")


def test_concurrent_starts_on_one_schema_all_migrate_it() -> None:
    with postgres_schema_url() as url:
        engines = [make_engine(url) for _ in range(4)]
        errors: list[BaseException] = []

        def start(engine: object) -> None:
            try:
                upgrade(engine)  # type: ignore[arg-type]
            except BaseException as exc:  # a lost race would be a duplicate-table error here
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        assert "fine_tuning_jobs" in inspect(engines[0]).get_table_names()
        for engine in engines:
            engine.dispose()


def test_a_migration_in_another_schema_does_not_wait_for_this_ones_lock() -> None:
    with postgres_schema_url() as held_url, postgres_schema_url() as other_url:
        holder = create_engine(held_url)
        with holder.connect() as connection:
            connection.execute(text(f"SELECT pg_advisory_lock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
            done = threading.Event()
            other = make_engine(other_url)
            thread = threading.Thread(target=lambda: (upgrade(other), done.set()))
            thread.start()
            assert done.wait(60), "the other schema's migration waited for this schema's lock"
            thread.join()
            other.dispose()

            # …while a start on the locked schema does wait for it
            same = make_engine(held_url)
            waited = threading.Event()
            blocked = threading.Thread(target=lambda: (upgrade(same), waited.set()), daemon=True)
            blocked.start()
            assert not waited.wait(1.5)
            connection.execute(text(f"SELECT pg_advisory_unlock{_PG_LOCK}"), {"key": _PG_LOCK_KEY})
            connection.commit()
            assert waited.wait(60)
            blocked.join()
            same.dispose()
        holder.dispose()
