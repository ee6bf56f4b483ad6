"""The worker loop: validate files, claim queued jobs, run them, and carry out pause and cancel.

Shaped like procrastinate's worker: one loop that wakes on a notification or a short
poll, side duties each turn (control, recovery, expiry, queue reports), and a graceful stop that asks
every trainer to checkpoint and puts its job back in the queue, so a restart loses no step.

Any number of workers may share one database and data folder (in the server process, or `openft worker`
processes). A claim is an atomic UPDATE that bumps the job's `attempt` (the fencing token) and gives the
worker a lease; a separate heartbeat thread renews the leases, so a slow turn of the loop cannot cost a
claim. A job whose lease expired is taken back (`_recover_abandoned`, attempt bumped again) and continues
from its last checkpoint on whichever worker claims it next; every later write of the old worker is
refused (runner.py), and the trainers themselves never share a job folder (training/folder_lock.py).
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

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import ModelCatalog
from openft.datasets import auto, chat
from openft.datasets.validate import validate_for_method
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.retry import is_transient
from openft.db.tables import JobEventRow, JobRow
from openft.fsutil import atomic_write_text, commit_dir, ensure_dir, temp_sibling
from openft.jobs import queue
from openft.jobs.events import new_event
from openft.jobs.job_file import PARENT_DIR, build_spec, resolve_hyperparameters
from openft.jobs.outcomes import record_failure
from openft.jobs.retention import sweep_finished_job_folders
from openft.jobs.runner import TrainingRun
from openft.jobs.states import JobStatus
from openft.settings import Settings
from openft.storage import BlobStore
from openft.trainer_contract import committed_checkpoint_steps

log = logging.getLogger(__name__)
EXPIRY_SWEEP_SECONDS = 60.0
RETENTION_SWEEP_SECONDS = 600.0
"""How often finished jobs' folders are looked at for removal (jobs/retention.py)."""
SHUTDOWN_GRACE_SECONDS = 120.0
"""How long a graceful stop waits for trainers to checkpoint before killing them."""
QUEUE_REPORT_LOCK_KEY = 0x0F7_D9
"""PostgreSQL advisory lock: one worker at a time writes queue events (no duplicates between workers)."""


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
        self._reads = read_only_sessions(sessions)  # look-arounds: no write lock on SQLite (db/engine.py)
        self._store = store
        self._catalog = catalog
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
        self._last_recovery_check = 0.0

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

    def _beat_forever(self) -> None:
        """Renew the leases three times per lease period, independent of the loop's pace."""
        interval = max(0.05, self.settings.lease_seconds / 3)
        while self._beating.is_set():
            try:
                self._heartbeat()
            except Exception:
                log.exception("heartbeat failed; retrying")
            time.sleep(interval)

    def tick(self) -> None:
        """One turn of the loop (tests call this directly)."""
        self._reap()
        self._apply_controls()
        self._recover_abandoned()
        self._expire_files()
        self._sweep_job_folders()
        if self._stopping.is_set():
            return
        self._report_queue()
        self._claim_validation()
        while len(self._runs) < self.settings.max_jobs and self._claim_training():
            pass

    # duties -----------------------------------------------------------------------------------
    def _reap(self) -> None:
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
        with self._lock:
            claims = {job_id: run.attempt for job_id, run in self._runs.items()}
            claims.update({job_id: attempt for job_id, (attempt, _t) in self._validations.items()})
        return claims

    def _heartbeat(self) -> None:
        claims = self._claims()
        if not claims:
            return
        with self._sessions.begin() as session:
            lost = repo.renew_leases(session, self.worker_id, claims, self.settings.lease_seconds)
        with self._lock:
            lost_runs = [self._runs[job_id] for job_id in lost if job_id in self._runs]
        for run in lost_runs:
            if run.alive():
                log.warning("lost the claim on %s; stopping its trainer", run.job_id)
            run.claim_lost()

    def _apply_controls(self) -> None:
        """Deliver users' decisions to running trainers: pause → checkpoint and exit; cancel → kill."""
        if not self._runs:
            return
        with self._reads.begin() as session:
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
        """Jobs whose worker stopped renewing its lease go back to the queue (or to paused).

        The step the job will resume from is the newest checkpoint in its folder (the dead worker may not
        have recorded it); the new run's trainer confirms it ("Fine-tuning resumed from …") and the runner
        then supersedes the dead run's metrics events for later steps. Looked at a few times per lease
        period (a lease cannot expire faster), with a read first: the write lock only when there is work.
        """
        now = time.time()
        if now - self._last_recovery_check < max(self.settings.worker_poll_seconds, self.settings.lease_seconds / 6):
            return
        self._last_recovery_check = now
        claims = self._claims()
        with self._reads.begin() as session:
            statuses = [JobStatus.RUNNING, JobStatus.PAUSING]
            abandoned = [job for job in repo.jobs_with_expired_lease(session, statuses, now) if job.id not in claims]
        if not abandoned:
            return
        with self._sessions.begin() as session:
            for job in abandoned:
                steps = committed_checkpoint_steps(self._job_dir(job.id))
                step = steps[-1] if steps else 0
                pausing = job.status == JobStatus.PAUSING and bool(steps)
                target = JobStatus.PAUSED if pausing else JobStatus.QUEUED
                dead_worker, stopped_at = job.worker_id, job.completed_steps
                fields = {"estimated_finish": None, "completed_steps": step}
                # conditional on what was read: a renewal or another worker's recovery meanwhile wins
                if not repo.release_expired_claim(session, job, target, now=now, **fields):
                    continue
                who = "its worker"  # not its id: by default that names the worker's host and pid (README: Security)
                if target is JobStatus.PAUSED:
                    text = f"Recovered after {who} stopped while pausing; paused at the checkpoint of step {step}."
                elif step:
                    text = f"Recovered after {who} stopped (at step {stopped_at}); resuming from step {step}."
                else:
                    text = f"Recovered after {who} stopped (at step {stopped_at}); restarting from step 0."
                data = {"worker_id": dead_worker, "resume_step": step, "stopped_at_step": stopped_at}
                session.add(new_event(job.id, text, level="warn", data=data))
                log.warning("job %s: %s (worker %s)", job.id, text, dead_worker)

    def _report_queue(self) -> None:
        """A queue event for each queued job that just entered the queue or whose place changed
        meaningfully (jobs/queue.py): "Queued: position 2; estimated start in ~4 min".

        Decided on a read; written under the write lock (SQLite) or an advisory lock (PostgreSQL) after
        checking again that no other worker has just reported the same, so no report is made twice.
        """
        now = time.time()
        with self._reads.begin() as session:
            running, queued, finished = repo.queue_snapshot(session)
            if not queued:
                return
            estimates = queue.estimate_queue(running, queued, finished, now)
            previous = repo.latest_events_starting(session, [job.id for job in queued], queue.REPORT_PREFIX)
        due = [job for job in queued if _report_due(previous.get(job.id), estimates[job.id], job.attempt, now)]
        if not due:
            return
        with self._sessions.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                got = session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": QUEUE_REPORT_LOCK_KEY})
                if not got.scalar():
                    return  # another worker is reporting right now
            latest = repo.latest_events_starting(session, [job.id for job in due], queue.REPORT_PREFIX)
            for job in due:
                estimate, last = estimates[job.id], latest.get(job.id)
                if _report_due(last, estimate, job.attempt, now):
                    data = queue.report_data(estimate, job.attempt, last.data if last is not None else None)
                    session.add(new_event(job.id, queue.report_message(estimate, now), data=data))

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

    def _sweep_job_folders(self) -> None:
        """Remove finished jobs' working files after the retention (jobs/retention.py), every few minutes."""
        now = time.monotonic()
        if now - self._last_retention_sweep < RETENTION_SWEEP_SECONDS:
            return
        self._last_retention_sweep = now
        retention_seconds = self.settings.job_folder_retention_hours * 3600
        sweep_finished_job_folders(self.settings.jobs_dir, self._sessions, retention_seconds)

    # validation -------------------------------------------------------------------------------
    def _claim_validation(self) -> None:
        if self._validations or not self._claimable(JobStatus.VALIDATING_FILES):
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
        with self._lock:
            self._validations[job.id] = (job.attempt, thread)
        thread.start()

    def _job_dir(self, job_id: str) -> Path:
        return self.settings.jobs_dir / job_id

    def _validate(self, job: JobRow) -> None:
        try:
            self._validate_files(job)
        except Exception as exc:  # never a dead worker: the job fails with the reason
            if is_transient(exc):  # not the job's fault: its lease lapses and a worker validates it again
                log.warning("validation of %s stopped by a database error; it is retried: %s", job.id, exc)
                self._wake.set()
                return
            log.exception("validation of %s crashed", job.id)
            self._fail(job, "validation_error", f"Validating the files failed unexpectedly: {exc}", None)
        self._wake.set()

    def _validate_files(self, job: JobRow) -> None:
        job_dir = self._job_dir(job.id)
        ensure_dir(job_dir)  # durable in jobs/ before anything is written into it
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
            if ok:  # the queue event ("Queued: position …") follows at the next turn of the loop
                values = ", ".join(f"{name}={value}" for name, value in sorted(resolved.items()))
                summary = f"Files validated: {n_examples} training examples. Hyperparameters: {values}."
                session.add(new_event(job.id, summary))

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
    def _claimable(self, status: JobStatus) -> bool:
        """A read before the claim: most turns find nothing, and then need no write lock."""
        with self._reads.begin() as session:
            return repo.has_claimable_job(session, status, time.time(), fair=status is JobStatus.QUEUED)

    def _claim_training(self) -> bool:
        if not self._claimable(JobStatus.QUEUED):
            return False
        with self._sessions.begin() as session:
            job = repo.claim_next_job(
                session,
                JobStatus.QUEUED,
                JobStatus.RUNNING,
                worker_id=self.worker_id,
                lease_seconds=self.settings.lease_seconds,
                fair=True,  # organizations take turns; running limits hold (db/repositories.py)
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
            project=job.project,
            attempt=job.attempt,
            model_name=job.model_name,
            spec_path=spec_path,
            sessions=self._sessions,
            store=self._store,
            worker_id=self.worker_id,
            db_retry_seconds=self.settings.db_retry_seconds,
        )
        with self._lock:
            self._runs[job.id] = run
        try:
            run.start()
        except OSError as exc:
            with self._lock:
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


def _report_due(last: JobEventRow | None, estimate: queue.QueueEstimate, attempt: int, now: float) -> bool:
    return queue.worth_reporting(last.data if last is not None else None, estimate, attempt, now)


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
