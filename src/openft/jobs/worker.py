"""The worker loop: validate files, claim queued jobs, run them, and carry out pause and cancel.

Shaped like procrastinate's worker (style.md §7): one loop that wakes on a notification or a short
poll, side duties each turn (heartbeat, control, recovery, expiry), and a graceful stop that asks
every trainer to checkpoint and puts its job back in the queue, so a restart loses no step.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import ModelCatalog
from openft.datasets import auto, chat
from openft.datasets.validate import validate_for_method
from openft.db import repositories as repo
from openft.db.tables import JobRow
from openft.fsutil import atomic_write_text, commit_dir, temp_sibling
from openft.jobs.events import new_event
from openft.jobs.outcomes import record_failure
from openft.jobs.runner import TrainingRun
from openft.jobs.spec import PARENT_DIR, build_spec, resolve_hyperparameters
from openft.jobs.states import JobStatus
from openft.settings import Settings
from openft.storage import BlobStore

log = logging.getLogger(__name__)
EXPIRY_SWEEP_SECONDS = 60.0
SHUTDOWN_GRACE_SECONDS = 120.0
"""How long a graceful stop waits for trainers to checkpoint before killing them."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        store: BlobStore,
        catalog: ModelCatalog,
        *,
        worker_id: str | None = None,
    ):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._sessions = sessions
        self._store = store
        self._catalog = catalog
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._runs: dict[str, TrainingRun] = {}
        self._validations: dict[str, tuple[int, threading.Thread]] = {}
        self._last_expiry_sweep = 0.0

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="openft-worker", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """Wake the loop now (a job was created, paused, resumed or cancelled)."""
        self._wake.set()

    def stop(self, timeout: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Graceful stop: every trainer checkpoints and its job returns to the queue."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for run in list(self._runs.values()):
            run.request_stop()
        deadline = time.monotonic() + timeout
        for run in list(self._runs.values()):
            run.join(max(0.0, deadline - time.monotonic()))
            if run.alive():
                log.warning("trainer of %s did not stop in time; killing it", run.job_id)
                run.kill()
                run.join(10)
        for _attempt, thread in list(self._validations.values()):
            thread.join(timeout=5)

    def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("worker turn failed; retrying")
            self._wake.wait(self.settings.worker_poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        """One turn of the loop (tests call this directly)."""
        self._reap()
        self._heartbeat()
        self._apply_controls()
        self._recover_abandoned()
        self._expire_files()
        if self._stopping.is_set():
            return
        self._claim_validation()
        while len(self._runs) < self.settings.max_jobs and self._claim_training():
            pass

    # duties -----------------------------------------------------------------------------------
    def _reap(self) -> None:
        for job_id, run in list(self._runs.items()):
            if not run.alive():
                del self._runs[job_id]
                self._wake.set()
        for job_id, (_attempt, thread) in list(self._validations.items()):
            if not thread.is_alive():
                del self._validations[job_id]

    def _claims(self) -> dict[str, int]:
        claims = {job_id: run.attempt for job_id, run in self._runs.items()}
        claims.update({job_id: attempt for job_id, (attempt, _t) in self._validations.items()})
        return claims

    def _heartbeat(self) -> None:
        claims = self._claims()
        if not claims:
            return
        with self._sessions.begin() as session:
            lost = repo.renew_leases(session, self.worker_id, claims, self.settings.lease_seconds)
        for job_id in lost:
            run = self._runs.get(job_id)
            if run is not None:
                log.warning("lost the claim on %s; stopping its trainer", job_id)
                run.claim_lost()

    def _apply_controls(self) -> None:
        """Deliver users' decisions to running trainers: pause → checkpoint and exit; cancel → kill."""
        if not self._runs:
            return
        with self._sessions.begin() as session:
            statuses = repo.job_statuses(session, self._runs)
        for job_id, run in self._runs.items():
            status, attempt = statuses.get(job_id, (JobStatus.CANCELLED.value, run.attempt))
            if attempt != run.attempt:
                run.claim_lost()
            elif status == JobStatus.PAUSING:
                run.request_stop()
            elif status == JobStatus.CANCELLED:
                run.kill()

    def _recover_abandoned(self) -> None:
        """Jobs whose worker stopped renewing its lease go back to the queue (or to paused)."""
        now = time.time()
        with self._sessions.begin() as session:
            abandoned = repo.jobs_with_expired_lease(session, [JobStatus.RUNNING, JobStatus.PAUSING], now)
            for job in abandoned:
                if job.id in self._runs:
                    continue
                has_checkpoint = bool(repo.list_checkpoints(session, job.id, after=None, limit=1).data)
                pausing = job.status == JobStatus.PAUSING and has_checkpoint
                target = JobStatus.PAUSED if pausing else JobStatus.QUEUED
                fields = {"worker_id": None, "lease_expires_at": None, "estimated_finish": None}
                if repo.transition_job(session, job.id, target, sources=[JobStatus(job.status)], **fields):
                    where = "its last checkpoint" if has_checkpoint else "the start"
                    text = (
                        f"Recovered: the worker running this job stopped responding; the job continues from {where}."
                        if target is JobStatus.QUEUED
                        else "Recovered: the worker stopped responding while pausing; paused at the last checkpoint."
                    )
                    session.add(new_event(job.id, text, level="warn"))

    def _expire_files(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry_sweep < EXPIRY_SWEEP_SECONDS:
            return
        self._last_expiry_sweep = now
        with self._sessions.begin() as session:
            expired = [row.id for row in repo.expired_files(session, int(time.time()))]
            for file_id in expired:
                repo.delete_file(session, file_id)
        for file_id in expired:
            self._store.delete(file_id)

    # validation -------------------------------------------------------------------------------
    def _claim_validation(self) -> None:
        if self._validations:
            return
        with self._sessions.begin() as session:
            job = repo.claim_next_job(
                session,
                JobStatus.VALIDATING_FILES,
                JobStatus.VALIDATING_FILES,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
            )
        if job is None:
            return
        thread = threading.Thread(target=self._validate, args=(job,), name=f"validate-{job.id}", daemon=True)
        self._validations[job.id] = (job.attempt, thread)
        thread.start()

    def _job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def _validate(self, job: JobRow) -> None:
        try:
            self._validate_files(job)
        except Exception as exc:  # never a dead worker: the job fails with the reason
            log.exception("validation of %s crashed", job.id)
            self._fail(job, "validation_error", f"Validating the files failed unexpectedly: {exc}", None)
        self._wake.set()

    def _validate_files(self, job: JobRow) -> None:
        job_dir = self._job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        reports: dict[str, chat.ValidationReport] = {}
        for param, file_id, local_name, minimum in (
            ("training_file", job.training_file, "training.jsonl", chat.MIN_EXAMPLES),
            ("validation_file", job.validation_file, "validation.jsonl", 1),
        ):
            if file_id is None:
                continue
            local = job_dir / local_name
            if not local.exists():  # a job keeps its own copy: later deletion of the file cannot hurt it
                with self._sessions.begin() as session:
                    row = repo.get_file(session, job.organization_id, file_id)
                if row is None:
                    self._fail(
                        job, f"invalid_{param}", f"The {param.replace('_', ' ')} {file_id} no longer exists.", param
                    )
                    return
                self._store.snapshot_to(file_id, local)
            report = validate_for_method(local, job.method["type"], min_examples=minimum)
            if not report.ok:
                which = param.replace("_", " ")
                self._fail(
                    job,
                    report.code or chat.CODE_FORMAT,
                    f"The job failed due to a problem in the {which} ({file_id}): {report.summary()}",
                    param,
                )
                return
            reports[param] = report
        if job.parent_weights and not self._snapshot_parent(job, job_dir):
            return
        n_examples = reports["training_file"].n_examples
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
                worker_id=None,
                lease_expires_at=None,
            )
            if ok:
                values = ", ".join(f"{name}={value}" for name, value in sorted(resolved.items()))
                summary = f"Files validated: {n_examples} training examples. Hyperparameters: {values}."
                session.add(new_event(job.id, summary))
                position = repo.queue_position(session, job)
                session.add(
                    new_event(job.id, f"Job queued ({position} job(s) ahead).", data={"queue_position": position})
                )

    def _snapshot_parent(self, job: JobRow, job_dir: Path) -> bool:
        """Copy (hard-link) the weights a continued job starts from into the job: its own, for every resume."""
        target = job_dir / PARENT_DIR
        if target.exists():
            return True
        source = Path(str(job.parent_weights))
        if not source.is_dir():
            self._fail(job, "model_not_found", f"The model {job.model!r} to continue from no longer exists.", "model")
            return False
        tmp = temp_sibling(target)
        shutil.copytree(source, tmp, copy_function=_link_or_copy)
        commit_dir(tmp, target)
        return True

    def _fail(self, job: JobRow, code: str, message: str, param: str | None) -> None:
        with self._sessions.begin() as session:
            record_failure(session, job.id, attempt=job.attempt, code=code, message=message, param=param)

    # training ---------------------------------------------------------------------------------
    def _claim_training(self) -> bool:
        with self._sessions.begin() as session:
            job = repo.claim_next_job(
                session,
                JobStatus.QUEUED,
                JobStatus.RUNNING,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
            )
            if job is not None and job.started_at is None:
                repo.update_job_fenced(session, job.id, job.attempt, started_at=int(time.time()))
        if job is None:
            return False
        try:
            spec_path = self._write_spec(job)
        except _SpecProblem as problem:
            self._fail(job, problem.code, str(problem), problem.param)
            return True
        run = TrainingRun(
            job_id=job.id,
            org_id=job.organization_id,
            attempt=job.attempt,
            model_name=job.model_name,
            spec_path=spec_path,
            sessions=self._sessions,
            store=self._store,
        )
        self._runs[job.id] = run
        try:
            run.start()
        except OSError as exc:
            del self._runs[job.id]
            self._fail(job, "training_process_failed_to_start", f"Could not start the trainer: {exc}", None)
        return True

    def _write_spec(self, job: JobRow) -> Path:
        base = None
        if not job.parent_weights:
            base = self._catalog.get(job.base)
            if base is None:
                raise _SpecProblem("model_not_found", f"The base model {job.base!r} is no longer available.", "model")
        job_dir = self._job_dir(job.id)
        spec_path = job_dir / "job.json"
        atomic_write_text(spec_path, build_spec(job, base, self.settings, job_dir).model_dump_json(indent=2))
        return spec_path


def _link_or_copy(source: str, dest: str) -> None:
    """Hard links cost no space; weights are never modified in place, so sharing the inode is safe."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


class _SpecProblem(Exception):
    def __init__(self, code: str, message: str, param: str | None):
        super().__init__(message)
        self.code = code
        self.param = param
