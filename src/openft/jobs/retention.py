"""Removing finished jobs' working files after `OPENFT_JOB_FOLDER_RETENTION_HOURS` (README, "Limits").

A job folder (`DATA_DIR/jobs/<id>`, layout in trainer_contract.py) holds what training needs to resume — each
checkpoint's `state/` (optimizer, RNG, data position: often larger than the weights), the job's copy of its
training and validation data, `metrics.jsonl`, `train.log` — next to what a finished job is for:

- **failed or cancelled**: nothing in the folder is a model anyone was promised (the API serves only
  succeeded jobs' models; their checkpoints stay reachable only for the retention), so the whole folder goes,
  and the job's checkpoint rows with it (they would name weights that no longer exist);
- **succeeded**: the final model (`model/`, where `model_path` points), every checkpoint's servable weights
  (`adapter/` or `model/` and its `meta.json`), `results.csv`, `parent/` (the weights a continued job's
  adapter sits on) and `job.json` stay: they are served and exported. Only the resume state, the data copy
  and the log are removed. The result *file* clients download is a copy in the file store, untouched here.

Only folders whose job row says it finished are touched: a folder with no row (another database, a job
being created) is never removed. The worker runs this every few minutes (jobs/worker.py).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.domain.job_states import JobStatus
from openft.fsutil import remove_tree
from openft.trainer_contract import CHECKPOINT_STATE_DIR, CHECKPOINTS_DIR

log = logging.getLogger(__name__)
SUCCEEDED_DISPOSABLE_FILES = ("training.jsonl", "validation.jsonl", "train.log")
"""Files of a succeeded job's folder that nothing reads once it finished (`metrics.jsonl` is small and stays)."""
BATCH = 500


def sweep_finished_job_folders(
    jobs_dir: Path,
    sessions: sessionmaker[Session],
    retention_seconds: float,
    *,
    now: float | None = None,
    forget_stored: Callable[[str], None] = lambda _job_id: None,
    succeeded_are_stored: bool = False,
) -> list[str]:
    """Remove what the module docstring says of each job that finished more than `retention_seconds` ago;
    returns the ids of the jobs whose folder changed. `forget_stored(job_id)` deletes what an object store
    holds of the job's run (its stored checkpoints, services/checkpoint_mirror.py) at the same time. With
    `succeeded_are_stored` (an object store holds succeeded jobs' artefacts) a succeeded job's folder is a cache
    and goes whole; serving restores what it needs (services/models.py)."""
    now = time.time() if now is None else now
    try:
        names = sorted(entry.name for entry in jobs_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    except FileNotFoundError:
        return []
    cleaned: list[str] = []
    for start in range(0, len(names), BATCH):
        with sessions.begin() as session:
            finished = repo.finished_jobs(session, names[start : start + BATCH])
        for job_id, (status, finished_at) in finished.items():
            if finished_at is None or now - finished_at < retention_seconds:
                continue
            folder = jobs_dir / job_id
            if not _forgot_stored(forget_stored, job_id, folder, status):
                continue  # the store unreachable: the next sweep tries again (the folder is still as it was)
            if status in (JobStatus.FAILED, JobStatus.CANCELLED):
                with sessions.begin() as session:
                    repo.delete_checkpoints_of(session, job_id)
                remove_tree(folder)
                cleaned.append(job_id)
            elif status is JobStatus.SUCCEEDED and succeeded_are_stored:
                remove_tree(folder)
                cleaned.append(job_id)
            elif status is JobStatus.SUCCEEDED and _strip_succeeded(folder):
                cleaned.append(job_id)
    if cleaned:
        log.info("removed the working files of %d finished jobs: %s", len(cleaned), ", ".join(cleaned[:20]))
    return cleaned


def _forgot_stored(forget: Callable[[str], None], job_id: str, folder: Path, status: JobStatus) -> bool:
    """Delete the job's stored run (once: before its folder is first removed or stripped); False on failure."""
    if status is JobStatus.SUCCEEDED and not _has_disposable(folder):
        return True  # stripped by an earlier sweep, which forgot the stored run then
    try:
        forget(job_id)
    except Exception:
        log.exception("job %s: could not delete its stored checkpoints", job_id)
        return False
    return True


def _has_disposable(folder: Path) -> bool:
    return any((folder / name).is_file() for name in SUCCEEDED_DISPOSABLE_FILES) or any(
        state.is_dir() for state in (folder / CHECKPOINTS_DIR).glob(f"*/{CHECKPOINT_STATE_DIR}")
    )


def _strip_succeeded(folder: Path) -> bool:
    """Remove a succeeded job's resume state, data copy and log; True if anything was there."""
    removed = False
    for name in SUCCEEDED_DISPOSABLE_FILES:
        path = folder / name
        if path.is_file():
            path.unlink()
            removed = True
    checkpoints = folder / CHECKPOINTS_DIR
    if checkpoints.is_dir():
        for state in checkpoints.glob(f"*/{CHECKPOINT_STATE_DIR}"):
            if state.is_dir():
                shutil.rmtree(state, ignore_errors=True)
                removed = True
    return removed
