"""The worker loop: claim jobs, keep their leases, carry out pause and cancel, and do the side duties each turn
(docs/design.md §2).

Shaped like procrastinate's worker: one loop that wakes on a notification or a short poll, side duties each
turn, and a graceful stop that asks every trainer to checkpoint and puts its job back in the queue, so a
restart loses no step. Each duty has its own module: validating files (jobs/validation.py), one training run
(jobs/runner.py), taking back abandoned jobs (jobs/recovery.py), queue events (jobs/queue_reports.py), finished
jobs' folders (jobs/retention.py); files expire through the files service (jobs/ports.py).

Any number of workers may share one database and data folder (in the server process, or `openft worker`
processes). A claim is an atomic UPDATE that bumps the job's `attempt` (the fencing token) and gives the
worker a lease; a separate heartbeat thread renews the leases, so a slow turn of the loop cannot cost a
claim. A job whose lease expired is taken back (attempt bumped again) and continues from its last checkpoint
on whichever worker claims it next; every later write of the old worker is refused (jobs/recorder.py), and
the trainers themselves never share a job folder (training/folder_lock.py).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import ModelCatalog
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.retry import is_transient
from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus
from openft.fsutil import atomic_write_text
from openft.jobs.batches import BatchRunner
from openft.jobs.eval_runs import EvalRunRunner
from openft.jobs.executors import Executor, build_executor
from openft.jobs.job_file import build_spec, judge_specs
from openft.jobs.outcome import fail_claimed
from openft.jobs.ports import JobFiles
from openft.jobs.queue_reports import report_queue
from openft.jobs.recorder import Claim
from openft.jobs.recovery import recover_abandoned
from openft.jobs.retention import sweep_finished_job_folders
from openft.jobs.runner import TrainingRun
from openft.jobs.validation import DATA_FILES, FileValidation
from openft.settings import Settings

log = logging.getLogger(__name__)
EXPIRY_SWEEP_SECONDS = 60.0
RETENTION_SWEEP_SECONDS = 600.0
"""How often finished jobs' folders are looked at for removal (jobs/retention.py)."""
SHUTDOWN_GRACE_SECONDS = 120.0
"""How long a graceful stop waits for trainers to checkpoint before killing them."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        files: JobFiles,
        catalog: ModelCatalog,
        *,
        worker_id: str | None = None,
        executor: Executor | None = None,
        batches: BatchRunner | None = None,
        eval_runs: EvalRunRunner | None = None,
    ):
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.sessions = sessions
        self._reads = read_only_sessions(sessions)  # look-arounds: no write lock on SQLite (db/engine.py)
        self._files = files
        self._catalog = catalog
        self._validation = FileValidation(sessions, files, settings.jobs_dir)
        self.executor = executor or build_executor(settings.executor, ray_address=settings.ray_address)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._force = threading.Event()
        self._beating = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._lock = threading.Lock()  # _runs and _validations: the loop changes them, the heartbeat reads them
        self._runs: dict[str, TrainingRun] = {}
        self._validations: dict[str, tuple[int, threading.Thread]] = {}
        self._last_expiry_sweep = 0.0
        self._last_retention_sweep = float("-inf")  # the first turn sweeps
        self._last_recovery_check = float("-inf")
        self._batches = batches  # the Batch API's batches, one at a time (jobs/batches.py)
        self._eval_runs = eval_runs  # the Evals API's runs, one at a time (jobs/eval_runs.py)

    # lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="openft-worker", daemon=True)
        self._thread.start()
        self._beating.set()
        self._heartbeat_thread = threading.Thread(target=self._beat_forever, name="openft-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def notify(self) -> None:
        """Wake the loop now (a job was created, paused, resumed or cancelled)."""
        self._wake.set()

    def stop(self, timeout: float = SHUTDOWN_GRACE_SECONDS) -> None:
        """Graceful stop: every trainer checkpoints and its job returns to the queue.

        Leases keep being renewed while the trainers checkpoint (that may take longer than a lease on a
        big model). A trainer still running after `timeout`, or after `force_stop()`, is killed and its job
        queued again: it continues from its last checkpoint (periodic, epoch or pause).
        """
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._batches is not None:
            self._batches.stop(timeout)
        if self._eval_runs is not None:
            self._eval_runs.stop(timeout)
        runs = self._snapshot_runs()
        for run in runs:
            run.request_stop()
        deadline = time.monotonic() + timeout
        while any(run.alive() for run in runs) and time.monotonic() < deadline and not self._force.is_set():
            for run in runs:
                run.join(0.1)
        for run in runs:
            if run.alive():
                log.warning("trainer of %s did not stop in time; killing it (the job is queued again)", run.job_id)
                run.abandon()
                run.join(10)
        with self._lock:
            validations = list(self._validations.values())
        for _attempt, thread in validations:
            thread.join(timeout=5)
        self._beating.clear()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)
        self.executor.close()

    def force_stop(self) -> None:
        """Make a `stop()` in progress stop waiting for checkpoints (a second Ctrl-C)."""
        self._force.set()

    def run_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("worker turn failed; retrying")
            self._wake.wait(self.settings.worker_poll_seconds)
            self._wake.clear()

    def tick(self) -> None:
        """One turn of the loop."""
        self.reap()
        self._apply_controls()
        now = time.monotonic()
        # a lease cannot expire faster than this: look a few times per lease period
        if now - self._last_recovery_check >= max(self.settings.worker_poll_seconds, self.settings.lease_seconds / 6):
            self._last_recovery_check = now
            self.recover_abandoned()
        if now - self._last_expiry_sweep >= EXPIRY_SWEEP_SECONDS:
            self._last_expiry_sweep = now
            self._files.delete_expired()
        if now - self._last_retention_sweep >= RETENTION_SWEEP_SECONDS:
            self._last_retention_sweep = now
            self.sweep_job_folders()
        if self._stopping.is_set():
            return
        report_queue(self.sessions, self._reads)
        self.claim_validation()
        # With Ray, a slot is only taken while the cluster has room: the jobs this worker runs are then the
        # jobs the cluster runs, which is what the queue's estimates count as slots (jobs/queue.py).
        while len(self._runs) < self.settings.max_jobs and self._worth_asking() and self.claim_training():
            pass
        if self._batches is not None:
            self._batches.turn()
        if self._eval_runs is not None:
            self._eval_runs.turn()

    def _worth_asking(self) -> bool:
        """A job waits and the executor has room for one (asked only then: with Ray, a call to the cluster)."""
        return self._claimable(JobStatus.QUEUED) and self.executor.has_room()

    # what the loop holds ----------------------------------------------------------------------
    def running_jobs(self) -> list[str]:
        """The jobs whose trainer this worker runs now."""
        with self._lock:
            return list(self._runs)

    def reap(self) -> None:
        """Forget finished runs and validations (a finished run frees a slot: wake the loop to fill it)."""
        with self._lock:
            for job_id, run in list(self._runs.items()):
                if not run.alive():
                    del self._runs[job_id]
                    self._wake.set()
            for job_id, (_attempt, thread) in list(self._validations.items()):
                if not thread.is_alive():
                    del self._validations[job_id]

    def _snapshot_runs(self) -> list[TrainingRun]:
        with self._lock:
            return list(self._runs.values())

    def _claims(self) -> dict[str, int]:
        """The jobs this worker holds and the attempt it holds each at. A validation that has ended is no claim
        (its entry waits for `reap`): the same job may already be claimed again for training at a newer attempt,
        and renewing the old one would find the claim "lost" and stop the new run."""
        with self._lock:
            claims = {
                job_id: attempt
                for job_id, (attempt, thread) in self._validations.items()
                if thread.ident is None or thread.is_alive()  # registered before it starts, or running
            }
            claims.update({job_id: run.attempt for job_id, run in self._runs.items()})
        return claims

    # leases and controls ----------------------------------------------------------------------
    def _beat_forever(self) -> None:
        """Renew the leases three times per lease period, independent of the loop's pace."""
        interval = max(0.05, self.settings.lease_seconds / 3)
        while self._beating.is_set():
            try:
                self._heartbeat()
            except Exception:
                log.exception("heartbeat failed; retrying")
            time.sleep(interval)

    def _heartbeat(self) -> None:
        claims = self._claims()
        if not claims:
            return
        with self.sessions.begin() as session:
            lost = repo.renew_leases(session, self.worker_id, claims, self.settings.lease_seconds)
        with self._lock:
            lost_runs = [self._runs[job_id] for job_id in lost if job_id in self._runs]
        for run in lost_runs:
            if run.alive():
                log.warning("lost the claim on %s; stopping its trainer", run.job_id)
            run.claim_lost()

    def _apply_controls(self) -> None:
        """Deliver users' decisions to running trainers: pause → checkpoint and exit; cancel → kill."""
        runs = self._snapshot_runs()
        if not runs:
            return
        with self._reads.begin() as session:
            statuses = repo.job_statuses(session, [run.job_id for run in runs])
        for run in runs:
            status, attempt = statuses.get(run.job_id, (JobStatus.CANCELLED.value, run.attempt))
            if attempt != run.attempt:
                run.claim_lost()
            elif status == JobStatus.PAUSING:
                run.request_stop()
            elif status == JobStatus.CANCELLED:
                run.kill()

    # side duties ------------------------------------------------------------------------------
    def recover_abandoned(self) -> list[str]:
        """Take back the jobs of workers that stopped renewing their leases (jobs/recovery.py)."""
        return recover_abandoned(self.sessions, self._reads, self.settings.jobs_dir, self._claims())

    def report_queue(self) -> int:
        """Write the queue events that are due (jobs/queue_reports.py)."""
        return report_queue(self.sessions, self._reads)

    def sweep_job_folders(self) -> None:
        """Remove finished jobs' working files after the retention (jobs/retention.py)."""
        retention_seconds = self.settings.job_folder_retention_hours * 3600
        sweep_finished_job_folders(
            self.settings.jobs_dir,
            self.sessions,
            retention_seconds,
            forget_stored=self._files.forget_job_checkpoints,
            succeeded_are_stored=self.settings.storage_url is not None,
        )

    # validation -------------------------------------------------------------------------------
    def claim_validation(self) -> threading.Thread | None:
        """Claim one job waiting in `validating_files` and validate it on a thread (returned); one at a time."""
        if self._validations or not self._claimable(JobStatus.VALIDATING_FILES):
            return None
        job = self._claim(JobStatus.VALIDATING_FILES, JobStatus.VALIDATING_FILES)
        if job is None:
            return None
        thread = threading.Thread(target=self._validate, args=(job,), name=f"validate-{job.id}", daemon=True)
        with self._lock:
            self._validations[job.id] = (job.attempt, thread)
        thread.start()
        return thread

    def _validate(self, job: JobRow) -> None:
        try:
            self._validation.run(job)
        except Exception as exc:  # never a dead worker: the job fails with the reason
            if is_transient(exc):  # not the job's fault: its lease lapses and a worker validates it again
                log.warning("validation of %s stopped by a database error; it is retried: %s", job.id, exc)
            else:
                log.exception("validation of %s crashed", job.id)
                self._validation.fail(job, "validation_error", f"Validating the files failed unexpectedly: {exc}", None)
        self._wake.set()

    # claims -----------------------------------------------------------------------------------
    def _claim(self, source: JobStatus, target: JobStatus) -> JobRow | None:
        """Take the next job in `source` under a lease (training claims are fair: organizations take turns and
        their running limits hold, db/repositories.py); a training job's first claim stamps `started_at`."""
        with self.sessions.begin() as session:
            job = repo.claim_next_job(
                session,
                source,
                target,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                fair=source is JobStatus.QUEUED,
            )
            if job is not None and target is JobStatus.RUNNING and job.started_at is None:
                repo.update_job_fenced(session, job.id, job.attempt, started_at=int(time.time()))
        return job

    def _claimable(self, status: JobStatus) -> bool:
        """A read before the claim: most turns find nothing, and then need no write lock."""
        with self._reads.begin() as session:
            return repo.has_claimable_job(session, status, time.time(), fair=status is JobStatus.QUEUED)

    # training ---------------------------------------------------------------------------------
    def claim_training(self) -> bool:
        """Claim the next queued job (organizations take turns) and start its trainer; False when none."""
        if not self._claimable(JobStatus.QUEUED):
            return False
        job = self._claim(JobStatus.QUEUED, JobStatus.RUNNING)
        if job is None:
            return False
        try:
            run = self.prepare_run(job)
        except JobFileProblem as problem:
            fail_claimed(self.sessions, job.id, job.attempt, problem.code, str(problem), problem.param)
            return True
        with self._lock:
            self._runs[job.id] = run
        try:
            run.start()
        except OSError as exc:
            with self._lock:
                del self._runs[job.id]
            message = f"Could not start the trainer: {exc}"
            fail_claimed(self.sessions, job.id, job.attempt, "training_process_failed_to_start", message, None)
        return True

    def prepare_run(self, job: JobRow) -> TrainingRun:
        """Write the claimed job's `job.json` and make its (not yet started) run."""
        claim = Claim(job.id, job.attempt, job.model_name, self.write_job_file(job), worker_id=self.worker_id)
        return TrainingRun(
            claim,
            org_id=job.organization_id,
            project=job.project,
            sessions=self.sessions,
            files=self._files,
            db_retry_seconds=self.settings.db_retry_seconds,
            executor=self.executor,
        )

    def write_job_file(self, job: JobRow) -> Path:
        """`job.json` in the job's folder: what the trainer is to do (jobs/job_file.py)."""
        base = None
        if not job.parent_weights:
            base = self._catalog.get(job.base)
            if base is None:
                raise JobFileProblem("model_not_found", f"The base model {job.base!r} is no longer available.", "model")
        job_dir = self.settings.jobs_dir / job.id
        try:
            judges = judge_specs(job, job_dir, self._catalog.get)
        except LookupError as exc:
            raise JobFileProblem("model_not_found", str(exc), "method.reinforcement.grader") from None
        spec_path = job_dir / "job.json"
        atomic_write_text(spec_path, build_spec(job, base, self.settings, job_dir, judges).model_dump_json(indent=2))
        try:  # with an object store the folder is a cache: bring in its data and newest checkpoint if it lacks them
            self._files.restore_checkpoint(job.id, job_dir)
        except Exception:  # the store unreachable: resume from what the folder holds (as exactly, if earlier)
            log.exception("job %s: could not restore its newest checkpoint from the object store", job.id)
        for param, local_name, _ in DATA_FILES:  # not stored yet (no checkpoint so far): the upload, if still there
            file_id, local = getattr(job, param), job_dir / local_name
            missing = file_id is not None and not local.exists()
            if missing and not self._files.snapshot(job.organization_id, file_id, local):
                raise JobFileProblem(f"invalid_{param}", f"The {param.replace('_', ' ')} {file_id} is gone.", param)
        return spec_path


class JobFileProblem(Exception):
    """The job cannot be written out for the trainer (its base model is gone): it fails with this."""

    def __init__(self, code: str, message: str, param: str | None):
        super().__init__(message)
        self.code = code
        self.param = param
