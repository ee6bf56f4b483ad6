"""Finished jobs' working folders after the retention (jobs/retention.py): a failed or cancelled job's folder
goes, with its checkpoint rows; a succeeded job keeps its model, its checkpoints' weights and its result
file, and loses only the resume state, the data copy and the log; nothing is touched before the retention,
nor for a job still running, nor a folder that no job row names."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import select

from openft.db.tables import CheckpointRow, JobRow
from openft.domain.job_states import JobStatus
from openft.services.container import Container
from tests.jobs.test_fairness import queue_job

DAY = 86_400


def _job_folder(container: Container, status: JobStatus, finished_ago: float) -> tuple[str, Path]:
    """A job row in `status` and a folder as the trainer leaves it (trainer_contract.py), with one checkpoint."""
    job_id = queue_job(container.sessions, container.default_org_id)
    folder = container.settings.jobs_dir / job_id
    checkpoint = folder / "checkpoints" / "step_000004"
    for sub in ("adapter", "state"):
        (checkpoint / sub).mkdir(parents=True)
        (checkpoint / sub / "weights.bin").write_bytes(b"w")
    (checkpoint / "meta.json").write_text("{}")
    (folder / "model").mkdir()
    (folder / "model" / "adapter_model.safetensors").write_bytes(b"m")
    for name in ("training.jsonl", "train.log", "results.csv", "metrics.jsonl", "job.json"):
        (folder / name).write_text("x")
    with container.sessions.begin() as session:
        job = session.scalar(select(JobRow).where(JobRow.id == job_id))
        assert job is not None
        job.status = status.value
        job.finished_at = (
            int(time.time() - finished_ago)
            if status in (JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.CANCELLED)
            else None
        )
        if status is JobStatus.SUCCEEDED:
            job.fine_tuned_model = job.model_name
            job.model_path = str(folder / "model")
        session.add(
            CheckpointRow(
                id=f"ftckpt-{job_id}",
                job_id=job_id,
                created_at=1,
                step_number=4,
                metrics={},
                fine_tuned_model_checkpoint=f"{job.model_name}:ckpt-step-4",
                path=str(checkpoint),
            )
        )
        return job_id, folder


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def test_the_worker_removes_finished_jobs_working_files_after_the_retention(container: Container) -> None:
    worker = container.worker
    assert worker is not None
    assert container.settings.job_folder_retention_hours == 24
    _, failed_dir = _job_folder(container, JobStatus.FAILED, 2 * DAY)
    _, cancelled_dir = _job_folder(container, JobStatus.CANCELLED, 2 * DAY)
    recent, recent_dir = _job_folder(container, JobStatus.FAILED, 3600)  # within the retention
    succeeded, succeeded_dir = _job_folder(container, JobStatus.SUCCEEDED, 2 * DAY)
    running, running_dir = _job_folder(container, JobStatus.RUNNING, 0)
    stray = container.settings.jobs_dir / "ftjob-of-another-database"
    stray.mkdir()
    (stray / "train.log").write_text("x")
    untouched = {path: _files(path) for path in (recent_dir, running_dir, stray)}

    worker.sweep_job_folders()

    assert not failed_dir.exists() and not cancelled_dir.exists()
    with container.sessions.begin() as session:
        left = set(session.scalars(select(CheckpointRow.job_id)))
    assert left == {recent, succeeded, running}  # a removed folder's checkpoints are no longer listed
    for path, files in untouched.items():
        assert _files(path) == files
    assert _files(succeeded_dir) == {
        "model/adapter_model.safetensors",
        "checkpoints/step_000004/adapter/weights.bin",
        "checkpoints/step_000004/meta.json",
        "results.csv",
        "metrics.jsonl",
        "job.json",
    }
    model_name = container.fine_tuning.get(None, succeeded).fine_tuned_model
    assert model_name is not None
    assert container.models.resolve(None, model_name).weights == succeeded_dir / "model"
    checkpoint = container.models.resolve(None, f"{model_name}:ckpt-step-4")
    assert checkpoint.weights == succeeded_dir / "checkpoints" / "step_000004" / "adapter"


def test_with_an_object_store_finished_jobs_stored_runs_go_and_succeeded_folders_go_whole(
    container: Container,
) -> None:
    """The store holds a succeeded job's artefacts, so its folder is a cache and goes whole; every finished job's
    stored checkpoints are deleted with its folder, once; a store that cannot be reached leaves the folder as it
    is for the next sweep."""
    from openft.jobs.retention import sweep_finished_job_folders

    failed, failed_dir = _job_folder(container, JobStatus.FAILED, 2 * DAY)
    succeeded, succeeded_dir = _job_folder(container, JobStatus.SUCCEEDED, 2 * DAY)
    recent, _ = _job_folder(container, JobStatus.SUCCEEDED, 3600)
    forgotten: list[str] = []

    def unreachable(job_id: str) -> None:
        raise ConnectionError("the store is down")

    jobs_dir, sessions = container.settings.jobs_dir, container.sessions
    assert (
        sweep_finished_job_folders(jobs_dir, sessions, DAY, forget_stored=unreachable, succeeded_are_stored=True) == []
    )
    assert failed_dir.exists() and succeeded_dir.exists()
    cleaned = sweep_finished_job_folders(
        jobs_dir, sessions, DAY, forget_stored=forgotten.append, succeeded_are_stored=True
    )
    assert sorted(cleaned) == sorted([failed, succeeded]) == sorted(forgotten)
    assert not failed_dir.exists() and not succeeded_dir.exists()
    assert recent not in forgotten
