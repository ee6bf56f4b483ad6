"""A database hiccup does not fail a job, and reads do not wait for writers (SQLite).

The faults are real: another connection takes SQLite's write lock (`BEGIN EXCLUSIVE`, as a backup or a long
admin transaction would) while a real trainer runs. The worker's engine waits 0.1 s for a lock instead of
30 s, so the lock surfaces as "database is locked" errors within the test's few seconds, as a lock held
longer than the busy timeout does in production.
"""

from __future__ import annotations

import gc
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.domain.job_states import JobStatus
from openft.jobs.recorder import Claim, ProgressRecorder
from openft.jobs.worker import Worker
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container, build_container
from openft.settings import Settings
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.databases import POSTGRES_URL, postgres_available, postgres_schema_url
from tests.support.waiting import wait_for


@pytest.fixture
def served(tmp_path: Path, models_dir: Path) -> Iterator[Container]:
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_key="k",
        run_worker=False,
        worker_poll_seconds=0.1,
        lease_seconds=60,
        checkpoint_every_steps=5,
        train_threads=1,
    )
    container = build_container(settings, with_worker=False)
    yield container
    container.engine.dispose()


def _worker(container: Container, **settings: float) -> Worker:
    """A worker on its own engine, whose SQLite statements wait only 0.1 s for a lock."""
    engine = make_engine(container.settings.resolved_database_url, sqlite_busy_timeout_ms=100)
    worker_settings = container.settings.model_copy(update=settings)
    sessions = make_session_factory(engine)
    return Worker(worker_settings, sessions, container.files, container.catalog, worker_id="w")


def _job(container: Container, n_examples: int, n_epochs: int) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(jsonl_bytes(valid_examples(n_examples)))
    file_id = container.files.create(container.default_org_id, purpose="fine-tune", filename="t", writer=writer).id
    params = FineTuningJobCreate.model_validate(
        {"model": TINY_MODEL_NAME, "training_file": file_id, "hyperparameters": {"batch_size": 1, "n_epochs": n_epochs}}
    )
    return container.fine_tuning.create(container.default_org_id, params).id


def _completed_steps(container: Container, job_id: str) -> int:
    with container.sessions.begin() as session:
        row = repo.get_job(session, None, job_id)
        return row.completed_steps if row is not None else 0


def _hold_write_lock(container: Container, seconds: float) -> None:
    """Take SQLite's write lock from another connection (no reader or writer of openft's can commit meanwhile)."""
    path = container.settings.resolved_database_url.removeprefix("sqlite:///")
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        connection.execute("COMMIT")
    finally:
        connection.close()


def _schema(url: str) -> str:
    """The schema a `postgres_schema_url` selects (its `search_path` option)."""
    return url.rsplit("search_path%3D", 1)[1].split("&")[0]


def _one_run(container: Container, job_id: str) -> bool:
    """Whether the job trained in one go: never recovered, never resumed from a checkpoint."""
    events = container.fine_tuning.list_events(None, job_id, after=None, limit=100).data
    return not any(e.message.startswith(("Recovered after", "Fine-tuning resumed")) for e in events)


def _metrics_steps(container: Container, job_id: str) -> list[int]:
    with container.sessions.begin() as session:
        return sorted(step for _id, step in repo.metrics_event_steps(session, job_id) if step is not None)


def test_a_read_does_not_wait_for_a_writer(served: Container) -> None:
    """API reads (jobs, events, files, models, the key lookup every request makes) start a deferred transaction: a
    connection holding the write lock (BEGIN IMMEDIATE: RESERVED) does not hold them up. They used to wait
    for it, up to the 30 s busy timeout."""
    container = served
    job_id = _job(container, 12, 1)
    key = container.keys.create("team-r").key
    path = container.settings.resolved_database_url.removeprefix("sqlite:///")
    writer = sqlite3.connect(path, timeout=30, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    results: list[object] = []

    def read() -> None:
        results.append(container.fine_tuning.get(container.default_org_id, job_id).status)
        results.append(len(container.fine_tuning.list_events(None, job_id, after=None, limit=10).data))
        results.append(container.keys.authenticate(key) is not None)
        file_id = container.fine_tuning.get(None, job_id).training_file
        results.append(container.files.get(None, file_id).id == file_id)
        results.append(len(container.files.list(None, purpose=None, after=None, limit=10, order="desc").data))
        results.append(TINY_MODEL_NAME in {m.id for m in container.models.list(None).data})

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    writer.execute("ROLLBACK")
    writer.close()
    assert not reader.is_alive(), "a read waited for the writer's lock"
    assert results == ["validating_files", 2, True, True, 1, True]


def test_a_lock_held_mid_training_delays_the_job_but_does_not_fail_it(
    served: Container, caplog: pytest.LogCaptureFixture
) -> None:
    container = served
    caplog.set_level(logging.WARNING, logger="openft.db.retry")
    worker = _worker(container)
    job_id = _job(container, 80, 3)  # 240 steps: the trainer is still at work when the lock goes
    worker.start()
    try:
        wait_for(lambda: _completed_steps(container, job_id) >= 2, timeout=180, what="training to start")
        assert worker.running_jobs()  # the lock comes while the trainer runs
        _hold_write_lock(container, 2.0)
        assert worker.running_jobs(), "the runner gave the job up during the lock (and killed its trainer)"
        wait_for(
            lambda: container.fine_tuning.get(None, job_id).status in ("succeeded", "failed"),
            timeout=300,
            what="the job to end",
        )
    finally:
        worker.stop(timeout=30)
    job = container.fine_tuning.get(None, job_id)
    assert job.status == "succeeded", job.error
    assert any("recording" in r.getMessage() and job_id in r.getMessage() for r in caplog.records), (
        "the runner never met the lock: the test did not test anything"
    )
    assert _metrics_steps(container, job_id) == list(range(1, 241))  # every step once: none lost, none twice
    assert _one_run(container, job_id)


def test_a_database_gone_past_the_retry_budget_requeues_the_job_from_its_checkpoint(served: Container) -> None:
    """Past `db_retry_seconds` the runner stops the trainer at a checkpoint and, once the database is back,
    queues the job (not failed); a worker runs it again from that checkpoint to the end."""
    container = served
    worker = _worker(container, db_retry_seconds=0.5)
    job_id = _job(container, 40, 3)
    worker.start()
    try:
        wait_for(lambda: _completed_steps(container, job_id) >= 2, timeout=180, what="training to start")
        _hold_write_lock(container, 5.0)
        wait_for(
            lambda: container.fine_tuning.get(None, job_id).status in ("succeeded", "failed"),
            timeout=300,
            what="the job to end",
        )
    finally:
        worker.stop(timeout=30)
    job = container.fine_tuning.get(None, job_id)
    assert job.status == "succeeded", job.error
    messages = [e.message for e in container.fine_tuning.list_events(None, job_id, after=None, limit=1000).data]
    assert any("the database was unreachable" in m for m in messages), messages[:20]
    assert any(m.startswith("Fine-tuning resumed from the checkpoint") for m in messages)
    assert _metrics_steps(container, job_id) == list(range(1, 121))


@pytest.mark.postgres
def test_postgres_connections_killed_mid_training_do_not_fail_the_job(
    tmp_path: Path, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL: for 3 s every connection of the worker is killed (`pg_terminate_backend`) as soon as it shows
    up, as a restart or fail-over does; the runner reconnects and the job succeeds with every step once."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at OPENFT_TEST_POSTGRES_URL")
    caplog.set_level(logging.WARNING, logger="openft.db.retry")
    with postgres_schema_url() as url:
        settings = Settings(
            data_dir=tmp_path / "data",
            models_dir=models_dir,
            api_key="k",
            database_url=url,
            run_worker=False,
            worker_poll_seconds=0.1,
            lease_seconds=60,
            train_threads=1,
        )
        container = build_container(settings, with_worker=False)
        worker_engine = make_engine(f"{url}&application_name=openft-hiccup-worker")
        worker = Worker(settings, make_session_factory(worker_engine), container.files, container.catalog)
        killer = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        try:
            job_id = _job(container, 80, 3)
            worker.start()
            wait_for(lambda: _completed_steps(container, job_id) >= 2, timeout=180, what="training to start")
            killed = 0
            with killer.connect() as holder, killer.connect() as connection:
                # the jobs table locked: every write of the runner waits, mid-transaction, and is killed there
                holder.execute(text("BEGIN"))
                holder.execute(text(f"SET LOCAL search_path = {_schema(url)}"))
                holder.execute(text("LOCK TABLE fine_tuning_jobs IN ACCESS EXCLUSIVE MODE"))
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline:
                    killed += len(
                        connection.execute(
                            text(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = 'openft-hiccup-worker'"
                            )
                        ).all()
                    )
                    time.sleep(0.05)
                holder.execute(text("COMMIT"))
            assert killed > 0
            wait_for(
                lambda: container.fine_tuning.get(None, job_id).status in ("succeeded", "failed"),
                timeout=300,
                what="the job to end",
            )
            job = container.fine_tuning.get(None, job_id)
            assert job.status == "succeeded", job.error
            assert _metrics_steps(container, job_id) == list(range(1, 241))
            assert any("recording" in r.getMessage() and job_id in r.getMessage() for r in caplog.records)
            assert _one_run(container, job_id)
        finally:
            worker.stop(timeout=30)
            worker_engine.dispose()
            killer.dispose()
            container.engine.dispose()


def test_a_retried_write_lands_once_and_returns_its_connections(served: Container) -> None:
    """No trainer: a run is handed a log message while another connection holds the write lock for a second.
    The write waits it out, lands once, and every try gave its connection back to the pool."""
    container = served
    job_id = _job(container, 12, 1)
    engine = make_engine(container.settings.resolved_database_url, sqlite_busy_timeout_ms=50)
    sessions = make_session_factory(engine)
    with sessions.begin() as session:  # claimed, as a worker would
        repo.claim_next_job(
            session, JobStatus.VALIDATING_FILES, JobStatus.VALIDATING_FILES, worker_id="w", lease_seconds=60
        )
    claim = Claim(job_id, 1, "m", container.settings.jobs_dir / job_id / "job.json")
    recorder = ProgressRecorder(claim, sessions, db_retry_seconds=30)
    holder = threading.Thread(target=_hold_write_lock, args=(container, 1.0))
    holder.start()
    time.sleep(0.2)
    gc.disable()  # a leaked session would otherwise be collected before the pool is looked at
    try:
        recorder.handle({"type": "log", "level": "info", "message": "hello through the lock"})
        holder.join()
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        gc.enable()
        engine.dispose()
    messages = [e.message for e in container.fine_tuning.list_events(None, job_id, after=None, limit=20).data]
    assert messages.count("hello through the lock") == 1
