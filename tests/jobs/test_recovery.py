"""Several workers on one database: claims, leases, fencing, and the bookkeeping of a recovered job.

No trainer runs here: a run's recorder is fed the progress messages a trainer would send, so
each case can stage exactly the crash it is about. Every test runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import FileRow
from openft.domain.job_states import JobStatus
from openft.jobs.recorder import ClaimLost
from openft.jobs.runner import TrainingRun
from openft.jobs.worker import Worker
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container, build_container
from openft.services.workers import build_worker_process
from openft.settings import Settings
from openft.storage import LocalBlobStore
from openft.trainer_contract import checkpoint_dir
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples

LEASE = 1.0
"""Short enough to wait out; long enough that a loaded machine does not expire a claim mid-test."""


@pytest.fixture
def shared(tmp_path: Path, models_dir: Path, database_url: str) -> Iterator[Container]:
    """A container (the server's view) on SQLite or PostgreSQL; workers are made with `_worker`."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_key="k",
        database_url=database_url,
        lease_seconds=LEASE,
    )
    built = build_container(settings, with_worker=False)
    yield built
    built.engine.dispose()


def _worker(container: Container, name: str) -> Worker:
    return Worker(container.settings, container.sessions, container.files, container.catalog, worker_id=name)


def _job(container: Container, n_examples: int = 12) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(jsonl_bytes(valid_examples(n_examples)))
    file_id = container.files.create(container.default_org_id, purpose="fine-tune", filename="t", writer=writer).id
    params = FineTuningJobCreate.model_validate(
        {"model": TINY_MODEL_NAME, "training_file": file_id, "hyperparameters": {"batch_size": 4, "n_epochs": 2}}
    )
    return container.fine_tuning.create(container.default_org_id, params).id


def _validated(container: Container, worker: Worker) -> None:
    """Run validation of every waiting job to the end on `worker`."""
    for _ in range(20):
        thread = worker.claim_validation()
        if thread is None:
            return
        thread.join()
        worker.reap()


def _claimed_run(container: Container, worker: Worker) -> TrainingRun:
    """Claim the next queued job on `worker` and give it a (not started) run, as `claim_training` does."""
    with container.sessions.begin() as session:
        job = repo.claim_next_job(
            session, JobStatus.QUEUED, JobStatus.RUNNING, worker_id=worker.worker_id, lease_seconds=LEASE
        )
    assert job is not None
    return worker.prepare_run(job)


def _metrics(step: int) -> dict[str, Any]:
    return {"type": "metrics", "step": step, "total_steps": 6, "train_loss": 1.0 / step, "step_seconds": 0.1}


def _write_checkpoint_folder(job_dir: Path, step: int, kind: str) -> dict[str, Any]:
    """A committed checkpoint folder as the trainer leaves it (only what the worker looks at)."""
    folder = checkpoint_dir(job_dir, step)
    (folder / "adapter").mkdir(parents=True)
    meta = {"step": step, "epoch": 1, "kind": kind, "metrics": {"step": step, "train_loss": 1.0 / step}}
    (folder / "meta.json").write_text(json.dumps(meta))
    return {**meta, "path": str(folder)}


def _metrics_steps(container: Container, job_id: str) -> list[int]:
    with container.sessions.begin() as session:
        return sorted(step for _id, step in repo.metrics_event_steps(session, job_id) if step is not None)


def _events(container: Container, job_id: str) -> list[Any]:
    return list(reversed(container.fine_tuning.list_events(None, job_id, after=None, limit=100).data))


def _checkpoint_steps(container: Container, job_id: str) -> list[int]:
    with container.sessions.begin() as session:
        return sorted(row.step_number for row in repo.checkpoints_of(session, job_id))


def test_a_job_being_validated_is_not_taken_over_while_its_lease_lives(shared: Container) -> None:
    job_id = _job(shared)
    first, second = _worker(shared, "w1"), _worker(shared, "w2")
    with shared.sessions.begin() as session:
        held = repo.claim_next_job(
            session, JobStatus.VALIDATING_FILES, JobStatus.VALIDATING_FILES, worker_id="w1", lease_seconds=LEASE
        )
    assert held is not None and held.id == job_id
    assert second.claim_validation() is None, "a second worker took a job whose validation lease is live"
    time.sleep(LEASE + 0.1)  # w1 died without renewing: the job is claimable again
    _validated(shared, second)
    assert shared.fine_tuning.get(None, job_id).status == "queued"
    assert first.worker_id == "w1"


def test_a_run_whose_claim_was_taken_over_cannot_write_anything(shared: Container) -> None:
    job_id = _job(shared)
    old_worker, new_worker = _worker(shared, "old"), _worker(shared, "new")
    _validated(shared, old_worker)
    stale = _claimed_run(shared, old_worker)
    stale.recorder.handle(
        {"type": "started", "total_steps": 6, "start_step": 0, "steps_per_epoch": 3, "checkpoints": []}
    )
    stale.recorder.handle(_metrics(1))
    time.sleep(LEASE + 0.1)  # the old worker stops renewing (a long GC pause, a lost network)
    new_worker.recover_abandoned()
    assert shared.fine_tuning.get(None, job_id).status == "queued"
    fresh = _claimed_run(shared, new_worker)
    assert fresh.attempt > stale.attempt + 1  # recovery and the new claim each bumped it

    before = [(e.id, e.message) for e in _events(shared, job_id)]
    folder = _write_checkpoint_folder(stale.output_dir, 3, "epoch")
    for message in (
        _metrics(2),
        {"type": "log", "level": "info", "message": "late"},
        {"type": "checkpoint", "step": 3, "kind": "epoch", "path": folder["path"], "metrics": {"step": 3}},
        {"type": "checkpoint_removed", "step": 3, "path": folder["path"]},
        {"type": "started", "total_steps": 6, "start_step": 0, "steps_per_epoch": 3, "checkpoints": []},
    ):
        with pytest.raises(ClaimLost):
            stale.recorder.handle(message)
    # each ending is written under the stale claim, as if its check of the attempt had raced the takeover
    stale.end.stopped({"type": "stopped", "step": 1})  # graceful-stop bookkeeping: refused
    stale.end.fail("training_error", "late failure", None)  # failure: refused
    stale.end.killed()  # shutdown requeue: refused
    stale.outcome.total_steps = 6
    model = stale.output_dir / "model"
    model.mkdir()
    (model / "adapter_model.safetensors").write_bytes(b"weights")
    results = stale.output_dir / "results.csv"
    results.write_text("step,train_loss\n" + "".join(f"{s},0.5\n" for s in range(1, 7)))
    with pytest.raises(ClaimLost):  # success: refused, and its result file removed again
        stale.end.succeed({"step": 6, "model_path": str(model), "results_path": str(results)})

    job = shared.fine_tuning.get(None, job_id)
    assert job.status == "running" and job.error is None and job.fine_tuned_model is None
    assert [(e.id, e.message) for e in _events(shared, job_id)] == before
    assert _checkpoint_steps(shared, job_id) == []
    with shared.sessions.begin() as session:
        row = repo.get_job(session, None, job_id)
        assert row is not None and row.worker_id == "new" and row.attempt == fresh.attempt
    with shared.sessions.begin() as session:
        assert not session.scalars(select(FileRow).where(FileRow.purpose == "fine-tune-results")).all()
    stored = {p.name for p in shared.settings.files_dir.iterdir() if not p.name.startswith(".")}
    with shared.sessions.begin() as session:
        assert stored == set(session.scalars(select(FileRow.id)))  # the refused result's blob is gone too


def test_a_recovered_job_has_each_step_once_and_the_folders_checkpoints(shared: Container) -> None:
    """The dead run recorded steps 1–5 and the epoch checkpoint of step 3; then, unseen by the database,
    committed a pause checkpoint at step 4 (its worker had died) and pruned nothing. The new run resumes
    from step 4: the event of step 5 goes, step 4's is written if missing, the step-4 checkpoint appears."""
    job_id = _job(shared)
    dead, alive = _worker(shared, "dead"), _worker(shared, "alive")
    _validated(shared, dead)
    run = _claimed_run(shared, dead)
    run.recorder.handle({"type": "started", "total_steps": 6, "start_step": 0, "steps_per_epoch": 3, "checkpoints": []})
    for step in (1, 2, 3):
        run.recorder.handle(_metrics(step))
    epoch = _write_checkpoint_folder(run.output_dir, 3, "epoch")
    run.recorder.handle(
        {"type": "checkpoint", "step": 3, "kind": "epoch", "path": epoch["path"], "metrics": {"step": 3}}
    )
    run.recorder.handle(_metrics(5))  # step 4's message was lost in the dead worker's pipe; 5 was recorded
    periodic = _write_checkpoint_folder(run.output_dir, 2, "periodic")  # on disk, never a listed checkpoint
    pause = _write_checkpoint_folder(run.output_dir, 4, "pause")  # the orphaned trainer's last checkpoint
    rows = [{"step": s, "epoch": 1 + (s - 1) // 3, "train_loss": 1.0 / s} for s in range(1, 5)]
    (run.output_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _metrics_steps(shared, job_id) == [1, 2, 3, 5]

    time.sleep(LEASE + 0.1)
    alive.recover_abandoned()
    recovered = _events(shared, job_id)[-1]
    assert recovered.level == "warn"
    assert recovered.message == "Recovered after its worker stopped (at step 5); resuming from step 4."
    assert shared.fine_tuning.get(None, job_id).status == "queued"

    fresh = _claimed_run(shared, alive)
    fresh.recorder.handle(
        {
            "type": "started",
            "total_steps": 6,
            "start_step": 4,
            "steps_per_epoch": 3,
            "checkpoints": [periodic, epoch, pause],
        }
    )
    assert _metrics_steps(shared, job_id) == [1, 2, 3, 4]
    step_four = [e for e in _events(shared, job_id) if e.type == "metrics" and e.data["step"] == 4]
    assert step_four[0].data == {"step": 4, "total_steps": 6, "train_loss": 0.25}
    assert _checkpoint_steps(shared, job_id) == [3, 4]
    fresh.recorder.handle(_metrics(5))
    fresh.recorder.handle(_metrics(6))
    assert _metrics_steps(shared, job_id) == [1, 2, 3, 4, 5, 6]

    # a later resume after the step-3 checkpoint was pruned (its message lost too): its row goes
    fresh.recorder.handle(
        {"type": "started", "total_steps": 6, "start_step": 4, "steps_per_epoch": 3, "checkpoints": [pause]}
    )
    assert _checkpoint_steps(shared, job_id) == [4]
    assert _metrics_steps(shared, job_id) == [1, 2, 3, 4]


def test_a_periodic_checkpoint_is_an_event_but_not_a_listed_checkpoint(shared: Container) -> None:
    job_id = _job(shared)
    worker = _worker(shared, "w")
    _validated(shared, worker)
    run = _claimed_run(shared, worker)
    run.recorder.handle({"type": "started", "total_steps": 6, "start_step": 0, "steps_per_epoch": 3, "checkpoints": []})
    folder = _write_checkpoint_folder(run.output_dir, 2, "periodic")
    run.recorder.handle({"type": "checkpoint", "step": 2, "kind": "periodic", "path": folder["path"], "metrics": {}})
    assert _checkpoint_steps(shared, job_id) == []
    assert _events(shared, job_id)[-1].message.startswith("Recovery checkpoint saved at step 2")


def test_a_worker_process_migrates_a_fresh_database(tmp_path: Path, models_dir: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "fresh", models_dir=models_dir, database_url=database_url)
    process = build_worker_process(settings, worker_id="first")
    try:
        with process.worker.sessions.begin() as session:  # the schema is there: the worker can look for work
            assert repo.has_claimable_job(session, JobStatus.QUEUED, time.time()) is False
        assert process.worker.worker_id == "first" and settings.jobs_dir.is_dir()
    finally:
        process.engine.dispose()


def test_look_arounds_do_not_wait_for_the_sqlite_write_lock(shared: Container) -> None:
    if shared.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL readers never wait for writers")
    job_id = _job(shared)
    reads = read_only_sessions(shared.sessions)
    with shared.sessions.begin() as holder:  # another process's write transaction, held open
        holder.execute(text("UPDATE fine_tuning_jobs SET updated_at = updated_at WHERE id = :id"), {"id": job_id})
        started = time.monotonic()
        with reads.begin() as session:
            assert repo.job_statuses(session, [job_id])[job_id][0] == "validating_files"
        assert time.monotonic() - started < 1.0
