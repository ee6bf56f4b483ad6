"""Every migration keeps every row: a database with rows of every table is upgraded one revision at a time
from the first to the newest and downgraded back, and after each step every table that exists holds the
rows put in so far. (On SQLite the table rebuilds of Alembic's batch mode used to cascade-delete the events
and checkpoints of every job, because openft's connections enforce foreign keys; db/migrate.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, func, select
from sqlalchemy.exc import IntegrityError

from openft.db.engine import make_engine
from openft.db.migrate import MigrationIntegrityError, alembic_config, check_foreign_keys, downgrade, upgrade

TABLES = (
    "organizations",
    "api_keys",
    "files",
    "fine_tuning_jobs",
    "fine_tuning_job_events",
    "fine_tuning_job_checkpoints",
)


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def _rows(n: int) -> dict[str, dict[str, Any]]:
    """One row of each table, the n-th set (columns a revision lacks are left out on insert)."""
    job = f"ftjob-{n}"
    return {
        "organizations": {"id": f"org-{n}", "name": f"team-{n}", "created_at": 1},
        "api_keys": {
            "id": f"key-{n}",
            "organization_id": f"org-{n}",
            "key_hash": f"{n:064d}",
            "prefix": "sk-openft-x",
            "admin": False,
            "created_at": 1,
        },
        "files": {
            "id": f"file-{n}",
            "organization_id": f"org-{n}",
            "filename": "t.jsonl",
            "purpose": "fine-tune",
            "bytes": 10,
            "sha256": "0" * 64,
            "created_at": 1,
            "status": "processed",
        },
        "fine_tuning_jobs": {
            "id": job,
            "organization_id": f"org-{n}",
            "model": "m",
            "training_file": f"file-{n}",
            "status": "running",
            "created_at": 1,
            "updated_at": 1.0,
            "model_name": f"ft:m:team-{n}::{n}",
            "method": {"type": "supervised"},
            "seed": 1,
            "result_files": [],
            "completed_steps": 0,
            "attempt": 1,
        },
        "fine_tuning_job_events": {
            "id": f"ftevent-{n}",
            "job_id": job,
            "created_at": 1,
            "level": "info",
            "message": "hello",
            "type": "message",
        },
        "fine_tuning_job_checkpoints": {
            "id": f"ftckpt-{n}",
            "job_id": job,
            "created_at": 1,
            "step_number": 1,
            "metrics": {"step": 1},
            "fine_tuned_model_checkpoint": f"ft:m:team-{n}::{n}:ckpt-step-1",
            "path": "/nowhere",
        },
    }


def _insert_rows(engine: Engine, n: int) -> set[str]:
    metadata = MetaData()
    metadata.reflect(engine)
    inserted = set()
    with engine.begin() as connection:
        for name, values in _rows(n).items():
            table = metadata.tables.get(name)
            if table is None:
                continue
            connection.execute(table.insert().values({k: v for k, v in values.items() if k in table.c}))
            inserted.add(name)
    return inserted


def _counts(engine: Engine) -> dict[str, int]:
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.connect() as connection:
        return {
            name: int(connection.scalar(select(func.count()).select_from(metadata.tables[name])) or 0)
            for name in TABLES
            if name in metadata.tables
        }


def test_every_step_up_and_down_keeps_every_row(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        revisions = _revisions()
        assert revisions[0] == "0001" and len(revisions) >= 5
        expected: dict[str, int] = {}
        after_upgrade: dict[str, dict[str, int]] = {}
        for n, revision in enumerate(revisions):
            upgrade(engine, revision)
            counts = _counts(engine)
            assert counts == {name: expected.get(name, 0) for name in counts}, f"rows lost upgrading to {revision}"
            for name in _insert_rows(engine, n):
                expected[name] = expected.get(name, 0) + 1
            after_upgrade[revision] = _counts(engine)
            assert after_upgrade[revision] == {name: expected[name] for name in after_upgrade[revision]}
        for revision in reversed(revisions[:-1]):
            downgrade(engine, revision)
            counts = _counts(engine)
            assert counts == {name: expected[name] for name in counts}, f"rows lost downgrading to {revision}"
            assert set(counts) == set(after_upgrade[revision])
            expected = {name: count if name in counts else 0 for name, count in expected.items()}  # dropped table
        upgrade(engine)
        assert _counts(engine) == expected
        with engine.connect() as connection:
            check_foreign_keys(connection)
    finally:
        engine.dispose()


def test_connections_still_enforce_foreign_keys_after_migrating(tmp_path: Any) -> None:
    """Foreign keys are off only for the migration: the pooled connection comes back enforcing them."""
    engine = make_engine(f"sqlite:///{tmp_path / 'openft.db'}")
    try:
        upgrade(engine)
        metadata = MetaData()
        metadata.reflect(engine)
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(
                metadata.tables["fine_tuning_job_events"].insert().values(_rows(9)["fine_tuning_job_events"])
            )
    finally:
        engine.dispose()


def test_a_dangling_reference_after_a_migration_fails_loudly(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'openft.db'}")
    try:
        upgrade(engine, "0004")
        raw = engine.raw_connection()
        try:
            raw.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
            event = _rows(1)["fine_tuning_job_events"]
            raw.driver_connection.execute(  # type: ignore[union-attr]
                "INSERT INTO fine_tuning_job_events (id, job_id, created_at, level, message, type) "
                "VALUES (?, ?, 1, 'info', ?, 'message')",
                (event["id"], "ftjob-gone", json.dumps("x")),
            )
            raw.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
        finally:
            raw.close()
        with pytest.raises(MigrationIntegrityError, match="fine_tuning_job_events"):
            upgrade(engine)
    finally:
        engine.dispose()
