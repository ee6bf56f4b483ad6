"""One training process of one job attempt, and the thread that turns its progress into rows.

The process is `openft train job.json` (the command a person can run by hand). Its stdout carries
JSON-lines progress messages (openft.trainer_contract); its stderr goes to `train.log` in the job folder.
Every write is fenced by the claim's `attempt`: if another worker took the job over, the write
is refused, and this run kills its process and stops writing.

After a crash the database and the job folder can disagree: the dead worker recorded metrics events for
steps after the checkpoint the new run resumes from (they are trained again), and it missed messages
still in its pipe (a checkpoint committed, the steps just before it). The trainer's `started` message says
where it resumes and which checkpoints are on disk; `_reconcile` makes the job's rows match, so the
events have every step exactly once and the checkpoint list is the folder's.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import itertools
import logging
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.retry import DatabaseUnavailable, retry_transient
from openft.db.tables import CheckpointRow, FileRow, JobEventRow
from openft.jobs.events import new_event
from openft.jobs.outcomes import record_failure, record_pause
from openft.jobs.states import JobStatus
from openft.protocol.files import RESULT_PURPOSE
from openft.storage import BlobStore
from openft.trainer_contract import (
    DISK_FULL_REASON,
    DPO_RESULT_COLUMNS,
    METRICS_FILE,
    PARENT_PID_ENV,
    RESULT_COLUMNS,
    ExitCode,
    TrainJobSpec,
    committed_checkpoint_steps,
    emits_metrics,
    parse_progress_line,
    read_metrics,
)

log = logging.getLogger(__name__)
ETA_WINDOW = 20
"""Steps averaged for `estimated_finish` (recent steps reflect the current speed)."""


METRIC_NAMES = tuple(dict.fromkeys(RESULT_COLUMNS[1:] + DPO_RESULT_COLUMNS[1:]))
"""Metrics copied from the trainer's messages into `metrics` events (supervised and DPO)."""
SPEED_FIELDS = ("trained_tokens", "step_seconds")
"""Also copied into `metrics` events (not the result CSV): `openft jobs follow` computes tokens/s from them."""


class ClaimLost(Exception):
    """Another worker holds this job now; this run must stop writing."""


@dataclass
class RunOutcome:
    stopped: dict[str, Any] | None = None
    completed: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    last_step: int = 0
    total_steps: int | None = None
    trained_tokens: int = 0
    step_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=ETA_WINDOW))


def train_command(spec_path: Path) -> list[str]:
    """`openft train JOB.json`, run with this interpreter so the same installation trains."""
    return [sys.executable, "-m", "openft", "train", str(spec_path)]


class TrainingRun:
    def __init__(
        self,
        *,
        job_id: str,
        org_id: str,
        attempt: int,
        model_name: str,
        spec_path: Path,
        sessions: sessionmaker[Session],
        store: BlobStore,
        worker_id: str | None = None,
        project: str | None = None,
        db_retry_seconds: float = 60.0,
    ):
        self.job_id = job_id
        self.project = project
        self.worker_id = worker_id
        self.org_id = org_id
        self.attempt = attempt
        self.model_name = model_name
        self.spec_path = spec_path
        self.output_dir = spec_path.parent
        self._sessions = sessions
        self._store = store
        self._process: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._stop_sent = False
        self._stop_pending = False
        self._ready = False
        self._claim_lost = False
        self._requeue_on_exit = False
        self._db_retry_seconds = db_retry_seconds
        self._database_lost = False
        self._output_ended = False
        self.outcome = RunOutcome()

    # process control --------------------------------------------------------------------------
    def start(self) -> None:
        log_file = open(self.output_dir / "train.log", "ab")  # noqa: SIM115 — handed to the child
        try:
            self._process = subprocess.Popen(
                train_command(self.spec_path),
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C on the server must not hit the trainer directly
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                    PARENT_PID_ENV: str(os.getpid()),
                },
            )
        finally:
            log_file.close()
        self._thread = threading.Thread(target=self._follow, name=f"run-{self.job_id}", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request_stop(self) -> None:
        """Ask the trainer to finish its step, checkpoint and exit (pause or worker shutdown).

        Held back until the trainer's first message: before it has installed its handlers, SIGUSR1
        would kill it instead of stopping it cleanly.
        """
        if not self._ready:
            self._stop_pending = True
            return
        if self._process is not None and self._process.poll() is None and not self._stop_sent:
            self._stop_sent = True
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        """Cancel: no checkpoint is needed, free the process now."""
        if self._process is not None and self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def claim_lost(self) -> None:
        self._claim_lost = True
        self.kill()

    def abandon(self) -> None:
        """Worker shutdown ran out of time: kill the trainer, but queue the job again (it continues from its
        last checkpoint) instead of failing it: the job did nothing wrong."""
        self._requeue_on_exit = True
        self.kill()

    # progress ---------------------------------------------------------------------------------
    def _read(self, inbox: queue.SimpleQueue[dict[str, Any] | None]) -> None:
        """Pass the trainer's messages on as they come (None at the end of its output)."""
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                message = parse_progress_line(line)
                if message is None:
                    log.debug("trainer %s: %s", self.job_id, line.rstrip())
                    continue
                if not self._ready:
                    self._ready = True
                    if self._stop_pending:
                        self.request_stop()
                inbox.put(message)
        finally:
            inbox.put(None)

    def _follow(self) -> None:
        """Record the trainer's messages in order. Messages that piled up while the last write waited for the
        database are taken together, and a run of `metrics` among them is written in one transaction: with
        fast steps (or many jobs on SQLite, one writer at a time) one commit per step would fall behind."""
        assert self._process is not None
        inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(inbox,), name=f"read-{self.job_id}", daemon=True).start()
        try:
            while not self._output_ended:
                pending = [inbox.get()]
                while not inbox.empty() and pending[-1] is not None:
                    pending.append(inbox.get())
                self._output_ended = pending[-1] is None
                messages = [m for m in pending if m is not None]
                while messages and not self._claim_lost:
                    metrics = list(itertools.takewhile(lambda m: m["type"] == "metrics", messages))
                    if metrics:
                        self._on_metrics(metrics)
                        messages = messages[len(metrics) :]
                    else:
                        self._handle(messages.pop(0))
        except ClaimLost:
            self.claim_lost()
        except DatabaseUnavailable:
            log.error(
                "job %s: the database stayed unreachable for %g s; stopping the trainer at a checkpoint, and the job "
                "is queued again once the database is back",
                self.job_id,
                self._db_retry_seconds,
            )
            self._database_lost = True
            self.request_stop()
            self._drain(inbox)
        except Exception:
            log.exception("runner for %s failed while reading progress; killing the trainer", self.job_id)
            self.kill()
        finally:
            code = self._process.wait()
            if not self._claim_lost:
                try:  # the outcome is one compare-and-set transition: retried (without end) until the database is back
                    retry_transient(
                        lambda: self._finish(code),
                        math.inf,
                        what=f"recording the outcome of {self.job_id}",
                        give_up=lambda: self._claim_lost,
                    )
                except ClaimLost:
                    pass
                except Exception:
                    log.exception("runner for %s failed to record the outcome", self.job_id)

    def _drain(self, inbox: queue.SimpleQueue[dict[str, Any] | None]) -> None:
        """Without the database: read the trainer's output to its end (so it never blocks on a full pipe),
        keeping only how it ended. Metrics and checkpoints it reports meanwhile are recorded by the next run,
        which reconciles the rows with the folder it resumes from (`_reconcile`)."""
        while not self._output_ended:
            message = inbox.get()
            if message is None:
                self._output_ended = True
            elif message["type"] in ("stopped", "completed", "failed"):
                self._handle(message)

    def _write(self, **fields: Any) -> contextlib.AbstractContextManager[Session]:
        return _FencedWrite(self, fields)

    def _record(self, write: Callable[[bool], None], what: str) -> None:
        """Run `write(retrying)` — one fenced transaction — again after each transient database error, for up to
        `db_retry_seconds` (db/retry.py); then `DatabaseUnavailable`. `retrying` is True from the second try on:
        the previous try may have committed with its answer lost, so the write checks what is already there
        and never adds a row twice."""
        tries = itertools.count()
        retry_transient(
            lambda: write(next(tries) > 0),
            self._db_retry_seconds,
            what=f"recording {what} of {self.job_id}",
            give_up=lambda: self._claim_lost,
        )

    def _add_event_once(
        self,
        event: JobEventRow,
        fields: dict[str, Any],
        what: str,
        also: Callable[[Session], None] | None = None,
    ) -> None:
        """One event (and fenced job fields), written once however many tries it takes; `also(session)` runs in
        the same transaction, and only in the try that adds the event."""

        def write(retrying: bool) -> None:
            with self._write(**fields) as session:
                if retrying and repo.event_exists(session, event.id):
                    return
                if also is not None:
                    also(session)
                session.add(_fresh(event))

        self._record(write, what)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        outcome = self.outcome
        if kind == "started":
            outcome.total_steps = int(message["total_steps"])
            outcome.last_step = int(message.get("start_step") or 0)
            start = outcome.last_step
            text = (
                f"Fine-tuning started: {outcome.total_steps} steps over {message.get('n_examples')} examples."
                if start == 0
                else f"Fine-tuning resumed from the checkpoint at step {start} of {outcome.total_steps}."
            )
            data = {"start_step": start, **_pick(message, "num_threads"), "worker_id": self.worker_id}
            self._add_event_once(
                new_event(self.job_id, text, data=data),
                {"total_steps": outcome.total_steps, "completed_steps": start},
                "the start",
                also=lambda session: self._reconcile(session, message),
            )
        elif kind == "log":
            level = {"warn": "warn", "warning": "warn", "error": "error"}.get(str(message.get("level")), "info")
            self._add_event_once(new_event(self.job_id, str(message.get("message", "")), level=level), {}, "a log line")
        elif kind == "metrics":
            self._on_metrics([message])
        elif kind == "checkpoint":
            self._on_checkpoint(message)
        elif kind == "checkpoint_removed":

            def remove(_retrying: bool) -> None:  # a delete: the same on every try
                with self._write() as session:
                    repo.delete_checkpoint_for_step(session, self.job_id, int(message["step"]))

            self._record(remove, "a removed checkpoint")
        elif kind == "stopped":
            outcome.stopped = message
        elif kind == "completed":
            outcome.completed = message
        elif kind == "failed":
            outcome.failed = message

    def _on_metrics(self, messages: list[dict[str, Any]]) -> None:
        """Consecutive metrics messages: one event each, the job's progress from the last, one transaction."""
        outcome = self.outcome
        for message in messages:
            outcome.total_steps = int(message.get("total_steps") or outcome.total_steps or message["step"])
            outcome.trained_tokens = int(message.get("trained_tokens") or outcome.trained_tokens)
            if message.get("step_seconds") is not None:
                outcome.step_seconds.append(float(message["step_seconds"]))
        step, total = int(messages[-1]["step"]), int(outcome.total_steps or messages[-1]["step"])
        outcome.last_step = step
        eta = None
        if outcome.step_seconds:
            mean = sum(outcome.step_seconds) / len(outcome.step_seconds)
            eta = int(time.time() + (total - step) * mean) + 1
        fields = {"completed_steps": step, "trained_tokens": outcome.trained_tokens, "estimated_finish": eta}

        def write(retrying: bool) -> None:
            with self._write(**fields) as session:
                recorded = {s for _id, s in repo.metrics_event_steps(session, self.job_id)} if retrying else set()
                session.add_all(
                    [_metrics_event(self.job_id, m, total) for m in messages if int(m["step"]) not in recorded]
                )

        self._record(write, "metrics")

    def _reconcile(self, session: Session, started: dict[str, Any]) -> None:
        """Make the job's rows match the folder the trainer starts from (see the module docstring).

        - metrics events after the resume step are superseded: those steps are trained again;
        - metrics events the trainer would have sent up to the resume step but the database lacks (the dead
          worker never read them) are written from metrics.jsonl, which the trainer has already cut back to
          the resume step, with the same contents;
        - checkpoint rows: one per epoch / pause checkpoint on disk, none for pruned or damaged ones.
        """
        start = int(started.get("start_step") or 0)
        total = int(started["total_steps"])
        recorded = repo.metrics_event_steps(session, self.job_id)
        seen: set[int] = set()
        superseded = []
        for event_id, step in recorded:
            if step is None or step > start or step in seen:
                superseded.append(event_id)
            else:
                seen.add(step)
        repo.delete_events(session, superseded)
        if start > 0 and started.get("steps_per_epoch"):
            plan = {
                "total_steps": total,
                "steps_per_epoch": int(started["steps_per_epoch"]),
                "metrics_every": TrainJobSpec.read(self.spec_path).metrics_every,
            }
            for row in read_metrics(self.output_dir / METRICS_FILE):
                step = int(row["step"])
                if step <= start and step not in seen and emits_metrics(step, **plan):
                    session.add(_metrics_event(self.job_id, row, total))
        if superseded or (start > 0 and len(seen) < start):
            log.info("job %s: %d metrics events superseded on resume from step %d", self.job_id, len(superseded), start)
        on_disk = {int(c["step"]): c for c in started.get("checkpoints") or [] if c.get("kind") != "periodic"}
        for row in repo.checkpoints_of(session, self.job_id):
            if row.step_number not in on_disk:
                repo.delete_checkpoint_for_step(session, self.job_id, row.step_number)
            else:
                del on_disk[row.step_number]
        for checkpoint in on_disk.values():  # committed by a trainer whose worker died before recording it
            session.add(self._checkpoint_row(checkpoint))

    def _on_checkpoint(self, message: dict[str, Any]) -> None:
        step = int(message["step"])
        if message.get("kind") == "periodic":  # a resume point only: not listed, not a model (README)
            text = f"Recovery checkpoint saved at step {step} (used to resume after a crash; not listed)."
            self._add_event_once(new_event(self.job_id, text, data={"step": step}), {}, "a checkpoint")
            return
        text = f"Checkpoint created at step {step}: {self._checkpoint_row(message).fine_tuned_model_checkpoint}"

        def replace_row(session: Session) -> None:
            repo.delete_checkpoint_for_step(session, self.job_id, step)  # a rerun after a crash rewrites it
            session.add(self._checkpoint_row(message))

        self._add_event_once(new_event(self.job_id, text, data={"step": step}), {}, "a checkpoint", also=replace_row)

    def _checkpoint_row(self, message: dict[str, Any]) -> CheckpointRow:
        step = int(message["step"])
        metrics = {"step": step, **{k: v for k, v in (message.get("metrics") or {}).items() if k != "step"}}
        return CheckpointRow(
            id=ids.checkpoint_id(),
            job_id=self.job_id,
            created_at=int(time.time()),
            step_number=step,
            metrics=metrics,
            fine_tuned_model_checkpoint=f"{self.model_name}:ckpt-step-{step}",
            path=str(message["path"]),
        )

    # outcome ----------------------------------------------------------------------------------
    def _finish(self, code: int) -> None:
        outcome = self.outcome
        with self._sessions.begin() as session:
            job = repo.get_job(session, None, self.job_id)
            if job is None or job.attempt != self.attempt:
                return
            status = JobStatus(job.status)
        if status is JobStatus.CANCELLED:
            return
        stopped = outcome.stopped or {}
        if code == ExitCode.COMPLETED and outcome.completed is not None:
            self._succeed(outcome.completed)
        elif code == ExitCode.STOPPED and stopped.get("reason") == DISK_FULL_REASON:
            with self._sessions.begin() as session:  # paused, not queued: a retry would fill the disk again
                record_pause(
                    session,
                    self.job_id,
                    attempt=self.attempt,
                    message=str(stopped.get("message")),
                    step=int(stopped.get("step") or 0),
                )
        elif code == ExitCode.STOPPED:
            self._stopped(status)
        elif self._requeue_on_exit:
            self._requeue_killed(status)
        elif code == ExitCode.FAILED and outcome.failed is not None:
            failed = outcome.failed
            self._fail(str(failed.get("code") or "training_error"), str(failed.get("message")), failed.get("param"))
        else:  # the log's path and tail are the operator's (they name server paths and hosts), not the owner's
            log.warning(
                "job %s: trainer exited with %s; %s ends: %s",
                self.job_id,
                code,
                self.output_dir / "train.log",
                _log_tail(self.output_dir / "train.log"),
            )
            self._fail(
                "training_process_died",
                f"The training process exited with code {code} at step {outcome.last_step}; "
                "the operator can see why in the job's train.log.",
                None,
            )

    def _succeed(self, completed: dict[str, Any]) -> None:
        total = self.outcome.total_steps
        model_path = Path(str(completed.get("model_path", "")))
        results_path = Path(str(completed.get("results_path", "")))
        problem = _verify_artefacts(int(completed.get("step", -1)), total, model_path, results_path)
        if problem:
            self._fail("incomplete_training", problem, None)
            return
        file_id = ids.file_id()
        blob = self._store.put_file(file_id, results_path)
        now = int(time.time())
        try:
            with self._sessions.begin() as session:
                session.add(
                    FileRow(
                        id=file_id,
                        organization_id=self.org_id,
                        project=self.project,
                        filename="results.csv",
                        purpose=RESULT_PURPOSE,
                        bytes=blob.size,
                        sha256=blob.sha256,
                        created_at=now,
                        status="processed",
                    )
                )
                ok = repo.transition_job(
                    session,
                    self.job_id,
                    JobStatus.SUCCEEDED,
                    attempt=self.attempt,
                    fine_tuned_model=self.model_name,
                    model_path=str(model_path),
                    finished_at=now,
                    estimated_finish=None,
                    trained_tokens=int(completed.get("trained_tokens") or self.outcome.trained_tokens),
                    completed_steps=total,
                    result_files=[file_id],
                    worker_id=None,
                    lease_expires_at=None,
                )
                if not ok:
                    raise ClaimLost
                session.add(new_event(self.job_id, f"New fine-tuned model created: {self.model_name}"))
                session.add(new_event(self.job_id, "The job has successfully completed"))
        except BaseException:
            self._store.delete(file_id)
            raise

    def _stopped(self, status: JobStatus) -> None:
        step = int((self.outcome.stopped or {}).get("step") or self.outcome.last_step)
        with self._sessions.begin() as session:
            if status is JobStatus.PAUSING:
                target, text = JobStatus.PAUSED, f"Job paused at step {step}; its checkpoint is saved."
            else:
                target = JobStatus.QUEUED
                text = f"Training stopped at step {step} (worker shutting down); the job is queued and will continue."
                if self._database_lost:
                    text = (
                        f"Training stopped at step {step}: the database was unreachable for over "
                        f"{self._db_retry_seconds:g} s. The job is queued and continues from its last checkpoint."
                    )
            ok = repo.transition_job(
                session,
                self.job_id,
                target,
                attempt=self.attempt,
                completed_steps=step,
                estimated_finish=None,
                worker_id=None,
                lease_expires_at=None,
            )
            if ok:
                session.add(new_event(self.job_id, text, data={"step": step}))

    def _requeue_killed(self, status: JobStatus) -> None:
        """The trainer was killed by our own shutdown: the job continues later from its last checkpoint."""
        steps = committed_checkpoint_steps(self.output_dir)
        step = steps[-1] if steps else 0
        target = JobStatus.PAUSED if status is JobStatus.PAUSING and steps else JobStatus.QUEUED
        with self._sessions.begin() as session:
            ok = repo.transition_job(
                session,
                self.job_id,
                target,
                attempt=self.attempt,
                completed_steps=step,
                estimated_finish=None,
                worker_id=None,
                lease_expires_at=None,
            )
            if ok:
                text = (
                    f"The training process did not stop in time when its worker shut down and was killed; the job "
                    f"is {target.value} and continues from the checkpoint at step {step}."
                )
                session.add(new_event(self.job_id, text, level="warn", data={"step": step}))

    def _fail(self, code: str, message: str, param: str | None) -> None:
        with self._sessions.begin() as session:
            record_failure(
                session,
                self.job_id,
                attempt=self.attempt,
                code=code,
                message=message,
                param=param,
                trained_tokens=self.outcome.trained_tokens,
            )


class _FencedWrite(contextlib.AbstractContextManager[Session]):
    """A transaction that first checks (and updates) the job under the run's claim."""

    def __init__(self, run: TrainingRun, fields: dict[str, Any]):
        self._run = run
        self._fields = fields
        self._cm = run._sessions.begin()

    def __enter__(self) -> Session:
        session = self._cm.__enter__()
        try:
            fenced = repo.update_job_fenced(session, self._run.job_id, self._run.attempt, **self._fields)
        except BaseException as error:  # e.g. the database is locked: end the transaction, give the connection back
            self._cm.__exit__(type(error), error, error.__traceback__)
            raise
        if not fenced:
            self._cm.__exit__(ClaimLost, ClaimLost(), None)
            raise ClaimLost
        return session

    def __exit__(self, *exc: Any) -> bool | None:
        return self._cm.__exit__(*exc)


def _metrics_event(job_id: str, values: dict[str, Any], total: int) -> JobEventRow:
    """The `metrics` event of one step, from a metrics message or the same step's metrics.jsonl row."""
    step = int(values["step"])
    data = {"step": step, "total_steps": total}
    for name in (*METRIC_NAMES, *SPEED_FIELDS):
        if values.get(name) is not None:
            data[name] = values[name]
    text = f"Step {step}/{total}: training loss={float(values['train_loss']):.4f}"
    return new_event(job_id, text, type="metrics", data=data)


def _fresh(event: JobEventRow) -> JobEventRow:
    """A new row object with the same values (id included): a rolled-back try leaves its objects unusable."""
    return JobEventRow(
        id=event.id,
        job_id=event.job_id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )


def _pick(message: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: message[name] for name in names if message.get(name) is not None}


def _verify_artefacts(step: int, total: int | None, model_path: Path, results_path: Path) -> str | None:
    """A job is `succeeded` only if every planned step ran and its artefacts exist."""
    if total is None or step != total:
        return f"Training ended at step {step} but {total} steps were planned."
    if not model_path.is_dir() or not any(model_path.glob("*.safetensors")):
        return f"The trained model is missing from {model_path}."
    if not results_path.is_file():
        return f"The result file is missing: {results_path}."
    with open(results_path, newline="", encoding="utf-8") as handle:
        rows = sum(1 for _ in csv.DictReader(handle))
    if rows != total:
        return f"The result file has {rows} step rows; {total} were expected."
    return None


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        tail = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in tail)[-500:]
