"""Validating a job's files: the step from `validating_files` to `queued` (or `failed`) (docs/design.md §2).

The worker claims a waiting job (it stays in `validating_files` under the worker's lease) and runs this on a
thread. The job gets its own copy of its training data (a later delete of the file cannot hurt it, nor its
resume), the data is checked with the trainer's own rules for the job's method, the hyperparameters left at
"auto" are resolved from the data, and a continued job gets its own copy of the weights it starts from.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.datasets import auto, chat
from openft.datasets.formats import validate_for_method
from openft.db import repositories as repo
from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus
from openft.fsutil import commit_dir, ensure_dir, temp_sibling
from openft.jobs.job_file import PARENT_DIR, judge_folders, resolve_hyperparameters
from openft.jobs.outcome import fail_claimed
from openft.jobs.ports import JobFiles

DATA_FILES = (
    ("training_file", "training.jsonl", chat.MIN_EXAMPLES),
    ("validation_file", "validation.jsonl", 1),
)
"""(request parameter, the job's own copy in its folder, the fewest examples it must hold)."""


class FileValidation:
    def __init__(self, sessions: sessionmaker[Session], files: JobFiles, jobs_dir: Path):
        self._sessions = sessions
        self._files = files
        self._jobs_dir = jobs_dir

    def run(self, job: JobRow) -> None:
        """Validate `job` (claimed by the caller at `job.attempt`) to `queued` or `failed`."""
        job_dir = self._jobs_dir / job.id
        ensure_dir(job_dir)  # durable in jobs/ before anything is written into it
        n_examples = 0
        for param, local_name, minimum in DATA_FILES:
            file_id = getattr(job, param)
            if file_id is None:
                continue
            local = job_dir / local_name
            if not local.exists() and not self._files.snapshot(job.organization_id, file_id, local):
                self.fail(job, f"invalid_{param}", f"The {param.replace('_', ' ')} {file_id} no longer exists.", param)
                return
            report = validate_for_method(local, job.method["type"], min_examples=minimum)
            if not report.ok:
                which = param.replace("_", " ")
                message = f"The job failed due to a problem in the {which} ({file_id}): {report.summary()}"
                self.fail(job, report.code or chat.CODE_FORMAT, message, param)
                return
            if param == "training_file":
                n_examples = report.n_examples
        if job.parent_weights and not self._snapshot_parent(job, job_dir):
            return
        if not self._snapshot_judges(job, job_dir):
            return
        resolved = resolve_hyperparameters(job, n_examples)
        total_steps = resolved["n_epochs"] * auto.steps_per_epoch(n_examples, resolved["batch_size"])
        with self._sessions.begin() as session:
            ok = repo.transition_job(
                session,
                job.id,
                JobStatus.QUEUED,
                attempt=job.attempt,
                resolved_hyperparameters=resolved,
                n_examples=n_examples,
                total_steps=total_steps,
            )
            if ok:  # the queue event ("Queued: position …") follows at the next turn of the loop
                values = ", ".join(f"{name}={value}" for name, value in sorted(resolved.items()))
                summary = f"Files validated: {n_examples} training examples. Hyperparameters: {values}."
                repo.add_event(session, job.id, summary)

    def fail(self, job: JobRow, code: str, message: str, param: str | None) -> None:
        fail_claimed(self._sessions, job.id, job.attempt, code, message, param)

    def _snapshot_parent(self, job: JobRow, job_dir: Path) -> bool:
        """Copy (hard-link) the weights a continued job starts from into the job: its own, for every resume."""
        target = job_dir / PARENT_DIR
        if target.exists():
            return True
        source = Path(str(job.parent_weights))
        if not source.is_dir():
            self.fail(job, "model_not_found", f"The model {job.model!r} to continue from no longer exists.", "model")
            return False
        _snapshot(source, target)
        return True

    def _snapshot_judges(self, job: JobRow, job_dir: Path) -> bool:
        """Copy (hard-link) each fine-tuned judge of a reinforcement job into it, like a parent's weights: a
        judge model deleted later cannot change or break the job."""
        for name, target in judge_folders(job, job_dir).items():
            if target.exists():
                continue
            source = Path(str((job.judge_models or {})[name]["weights"]))
            if not source.is_dir():
                message = f"The judge model {name!r} of the grader no longer exists."
                self.fail(job, "model_not_found", message, "method.reinforcement.grader")
                return False
            ensure_dir(target.parent)
            _snapshot(source, target)
        return True


def _snapshot(source: Path, target: Path) -> None:
    tmp = temp_sibling(target)
    shutil.copytree(source, tmp, copy_function=_link_or_copy)
    commit_dir(tmp, target)


def _link_or_copy(source: str, dest: str) -> None:
    """Hard links cost no space; weights are never modified in place, so sharing the inode is safe."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
