"""One training run: one job attempt's trainer process, followed to its end (docs/design.md §3).

Three parts, each in its own module: the trainer the executor runs (jobs/executors/: a subprocess, or a Ray
Train run), its progress messages turned into rows under the claim (jobs/recorder.py, with jobs/reconcile.py
after a crash), and the ending recorded (jobs/outcome.py). This module only wires them on a thread and decides
what to do when the claim or the database is lost.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft.db.retry import DatabaseUnavailable, retry_transient
from openft.jobs.executors import Executor, Inbox, LocalExecutor, TrainerHandle
from openft.jobs.outcome import RunEnd
from openft.jobs.ports import JobFiles
from openft.jobs.recorder import Claim, ClaimLost, ProgressRecorder, RunOutcome

log = logging.getLogger(__name__)

__all__ = ["ClaimLost", "TrainingRun"]


class TrainingRun:
    def __init__(
        self,
        claim: Claim,
        *,
        org_id: str,
        project: str | None,
        sessions: sessionmaker[Session],
        files: JobFiles,
        db_retry_seconds: float = 60.0,
        executor: Executor | None = None,
    ):
        self.claim = claim
        self.files = files
        self.process: TrainerHandle = (executor or LocalExecutor()).trainer(claim.job_id, claim.spec_path)
        self.recorder = ProgressRecorder(
            claim, sessions, db_retry_seconds=db_retry_seconds, give_up=lambda: self._claim_lost
        )
        self.end = RunEnd(
            claim=claim, org_id=org_id, project=project, sessions=sessions, files=files, outcome=self.recorder.outcome
        )
        self._thread: threading.Thread | None = None
        self._claim_lost = False

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    @property
    def attempt(self) -> int:
        return self.claim.attempt

    @property
    def output_dir(self) -> Path:
        return self.claim.spec_path.parent

    @property
    def outcome(self) -> RunOutcome:
        return self.recorder.outcome

    # control ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.process.start()
        self._thread = threading.Thread(target=self._follow, name=f"run-{self.job_id}", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Pause or worker shutdown: the trainer finishes its step, checkpoints and exits."""
        self.process.request_stop()

    def kill(self) -> None:
        """Cancel: no checkpoint is needed, free the process now."""
        self.process.kill()

    def claim_lost(self) -> None:
        """Another worker holds the job now: write nothing more, free the process."""
        self._claim_lost = True
        self.process.kill()

    def abandon(self) -> None:
        """Worker shutdown ran out of time: kill the trainer, but queue the job again (it continues from its
        last checkpoint) instead of failing it: the job did nothing wrong."""
        self.end.killed_by_shutdown = True
        self.process.kill()

    # the thread -------------------------------------------------------------------------------
    def _follow(self) -> None:
        """Record the trainer's messages in order, then its ending. Messages that piled up while the last write
        waited for the database are taken together (the recorder writes a run of metrics in one transaction)."""
        inbox: Inbox = queue.SimpleQueue()
        reader = threading.Thread(target=self.process.read_into, args=(inbox,), name=f"read-{self.job_id}", daemon=True)
        reader.start()
        ended = False
        try:
            while not ended:
                pending = _take_waiting(inbox)
                ended = pending[-1] is None
                messages = [m for m in pending if m is not None]
                self.recorder.record(list(messages))  # it takes messages off the list it is given
                self._store_checkpoints(messages)
                if self._claim_lost:
                    break
        except ClaimLost:
            self.claim_lost()
        except DatabaseUnavailable:
            log.error(
                "job %s: the database stayed unreachable for %g s; stopping the trainer at a checkpoint, and the job "
                "is queued again once the database is back",
                self.job_id,
                self.recorder.db_retry_seconds,
            )
            self.end.database_lost_after = self.recorder.db_retry_seconds
            self.process.request_stop()
            self._drain(inbox, ended)
        except Exception:
            log.exception("runner for %s failed while reading progress; killing the trainer", self.job_id)
            self.process.kill()
        finally:
            code = self.process.wait()
            if not self._claim_lost:
                try:  # the ending is one compare-and-set transition: retried (without end) until the database is back
                    retry_transient(
                        lambda: self.end.record(code, self.process.log_tail),
                        math.inf,
                        what=f"recording the outcome of {self.job_id}",
                        give_up=lambda: self._claim_lost,
                    )
                except ClaimLost:
                    pass
                except Exception:
                    log.exception("runner for %s failed to record the outcome", self.job_id)

    def _store_checkpoints(self, messages: list[dict[str, Any]]) -> None:
        """With an object store, the checkpoints the trainer commits and prunes (services/checkpoint_mirror.py).
        A failed upload is logged, not fatal: the checkpoint is in the job folder, and a resume elsewhere starts
        from the newest one that is stored (as exactly)."""
        for message in messages:
            try:
                if message["type"] == "checkpoint":
                    self.files.mirror_checkpoint(self.job_id, self.output_dir, int(message["step"]))
                elif message["type"] == "checkpoint_removed":
                    self.files.forget_checkpoint(self.job_id, int(message["step"]))
            except Exception:
                log.exception("job %s: storing the change of its checkpoint at step %s failed", self.job_id, message)

    def _drain(self, inbox: Inbox, ended: bool) -> None:
        """Without the database: read the trainer's output to its end (so it never blocks on a full pipe),
        keeping only how it ended. Metrics and checkpoints it reports meanwhile are recorded by the next run,
        which reconciles the rows with the folder it resumes from (jobs/reconcile.py)."""
        while not ended:
            message = inbox.get()
            if message is None:
                ended = True
            else:
                self.recorder.note_ending(message)


def _take_waiting(inbox: Inbox) -> list[dict[str, Any] | None]:
    """The next message, and every one already waiting behind it (up to the end of the output)."""
    pending = [inbox.get()]
    while not inbox.empty() and pending[-1] is not None:
        pending.append(inbox.get())
    return pending
