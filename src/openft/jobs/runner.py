"""One training process of one job attempt, and the thread that turns its progress into rows.

The process is `openft train job.json` (the command a person can run by hand). Its stdout carries
JSON-lines progress messages (openft.jobspec); its stderr goes to `train.log` in the job folder.
Every write is fenced by the claim's `attempt`: if another worker took the job over, the write
is refused, and this run kills its process and stops writing.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.tables import CheckpointRow, FileRow
from openft.jobs.events import new_event
from openft.jobs.outcomes import record_failure
from openft.jobs.states import JobStatus
from openft.jobspec import DPO_RESULT_COLUMNS, PARENT_PID_ENV, RESULT_COLUMNS, ExitCode, parse_progress_line
from openft.protocol.files import RESULT_PURPOSE
from openft.storage import BlobStore

log = logging.getLogger(__name__)
ETA_WINDOW = 20
"""Steps averaged for `estimated_finish` (recent steps reflect the current speed)."""


METRIC_NAMES = tuple(dict.fromkeys(RESULT_COLUMNS[1:] + DPO_RESULT_COLUMNS[1:]))
"""Metrics copied from the trainer's messages into `metrics` events (supervised and DPO)."""


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
    ):
        self.job_id = job_id
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

    # progress ---------------------------------------------------------------------------------
    def _follow(self) -> None:
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
                if not self._claim_lost:
                    self._handle(message)
        except ClaimLost:
            self.claim_lost()
        except Exception:
            log.exception("runner for %s failed while reading progress; killing the trainer", self.job_id)
            self.kill()
        finally:
            code = self._process.wait()
            if not self._claim_lost:
                try:
                    self._finish(code)
                except ClaimLost:
                    pass
                except Exception:
                    log.exception("runner for %s failed to record the outcome", self.job_id)

    def _write(self, **fields: Any) -> contextlib.AbstractContextManager[Session]:
        return _FencedWrite(self, fields)

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
            with self._write(total_steps=outcome.total_steps, completed_steps=start) as session:
                session.add(new_event(self.job_id, text, data={"start_step": start, **_pick(message, "num_threads")}))
        elif kind == "log":
            level = {"warn": "warn", "warning": "warn", "error": "error"}.get(str(message.get("level")), "info")
            with self._write() as session:
                session.add(new_event(self.job_id, str(message.get("message", "")), level=level))
        elif kind == "metrics":
            self._on_metrics(message)
        elif kind == "checkpoint":
            self._on_checkpoint(message)
        elif kind == "checkpoint_removed":
            with self._write() as session:
                repo.delete_checkpoint_for_step(session, self.job_id, int(message["step"]))
        elif kind == "stopped":
            outcome.stopped = message
        elif kind == "completed":
            outcome.completed = message
        elif kind == "failed":
            outcome.failed = message

    def _on_metrics(self, message: dict[str, Any]) -> None:
        outcome = self.outcome
        step = int(message["step"])
        total = int(message.get("total_steps") or outcome.total_steps or step)
        outcome.last_step, outcome.total_steps = step, total
        outcome.trained_tokens = int(message.get("trained_tokens") or outcome.trained_tokens)
        if message.get("step_seconds") is not None:
            outcome.step_seconds.append(float(message["step_seconds"]))
        eta = None
        if outcome.step_seconds:
            mean = sum(outcome.step_seconds) / len(outcome.step_seconds)
            eta = int(time.time() + (total - step) * mean) + 1
        data = {"step": step, "total_steps": total}
        for name in METRIC_NAMES:
            if message.get(name) is not None:
                data[name] = message[name]
        text = f"Step {step}/{total}: training loss={float(message['train_loss']):.4f}"
        with self._write(completed_steps=step, trained_tokens=outcome.trained_tokens, estimated_finish=eta) as session:
            session.add(new_event(self.job_id, text, type="metrics", data=data))

    def _on_checkpoint(self, message: dict[str, Any]) -> None:
        step = int(message["step"])
        name = f"{self.model_name}:ckpt-step-{step}"
        metrics = {"step": step, **{k: v for k, v in (message.get("metrics") or {}).items() if k != "step"}}
        with self._write() as session:
            repo.delete_checkpoint_for_step(session, self.job_id, step)  # a rerun after a crash rewrites it
            session.add(
                CheckpointRow(
                    id=ids.checkpoint_id(),
                    job_id=self.job_id,
                    created_at=int(time.time()),
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=name,
                    path=str(message["path"]),
                )
            )
            session.add(new_event(self.job_id, f"Checkpoint created at step {step}: {name}", data={"step": step}))

    # outcome ----------------------------------------------------------------------------------
    def _finish(self, code: int) -> None:
        outcome = self.outcome
        with self._sessions.begin() as session:
            job = repo.get_job(session, None, self.job_id)
            status = JobStatus(job.status) if job is not None else None
            if job is None or job.attempt != self.attempt:
                return
        if status is JobStatus.CANCELLED or status is None:
            return
        if code == ExitCode.COMPLETED and outcome.completed is not None:
            self._succeed(outcome.completed)
        elif code == ExitCode.STOPPED:
            self._stopped(status)
        elif code == ExitCode.FAILED and outcome.failed is not None:
            failed = outcome.failed
            self._fail(str(failed.get("code") or "training_error"), str(failed.get("message")), failed.get("param"))
        else:
            self._fail(
                "training_process_died",
                f"The training process exited with code {code} at step {outcome.last_step}; "
                f"see {self.output_dir / 'train.log'}. {_log_tail(self.output_dir / 'train.log')}".strip(),
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
        checkpoint = (self.outcome.stopped or {}).get("checkpoint")
        with self._sessions.begin() as session:
            if status is JobStatus.PAUSING:
                target, text = JobStatus.PAUSED, f"Job paused at step {step}; checkpoint written to {checkpoint}."
            else:
                target = JobStatus.QUEUED
                text = f"Training stopped at step {step} (worker shutting down); the job is queued and will continue."
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
        if not repo.update_job_fenced(session, self._run.job_id, self._run.attempt, **self._fields):
            self._cm.__exit__(ClaimLost, ClaimLost(), None)
            raise ClaimLost
        return session

    def __exit__(self, *exc: Any) -> bool | None:
        return self._cm.__exit__(*exc)


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
