"""How a job's run ends, recorded: succeeded, failed, or stopped early (paused or queued again) (docs/design.md §2).

Every ending is one transition through the repository under the run's claim (`attempt`); where a stopped job
goes is `after_stop` in the transition table's module, and nowhere else. A failure's message is read by the
job's owner: it is stored without server paths (`openft.redact`), however it was built (many come from
exception texts, which name files freely).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft.db import aliases as aliases_db
from openft.db import repositories as repo
from openft.domain.job_states import ACTIVE, JobStatus, after_stop, path_to
from openft.jobs.artefacts import is_artefact
from openft.jobs.ports import JobFiles
from openft.jobs.recorder import Claim, ClaimLost, RunOutcome
from openft.redact import redact_paths
from openft.trainer_contract import DISK_FULL_REASON, ExitCode, committed_checkpoint_steps

log = logging.getLogger(__name__)

Describe = Callable[[JobStatus], tuple[str, str]]
"""The event of a stop, by where the job went: (message, level)."""


def record_failure(
    session: Session, job_id: str, *, attempt: int, code: str, message: str, param: str | None, **fields: Any
) -> bool:
    """Move the job to `failed` with its `error`, under the caller's claim; False if the claim was lost."""
    message = redact_paths(message)
    ok = repo.transition_job(
        session,
        job_id,
        JobStatus.FAILED,
        attempt=attempt,
        error={"code": code, "message": message, "param": param},
        finished_at=int(time.time()),
        estimated_finish=None,
        **fields,
    )
    if ok:
        repo.add_event(session, job_id, message, level="error")
    return ok


def fail_claimed(
    sessions: sessionmaker[Session], job_id: str, attempt: int, code: str, message: str, param: str | None
) -> bool:
    """`record_failure` in a transaction of its own (a job that fails before its trainer runs)."""
    with sessions.begin() as session:
        return record_failure(session, job_id, attempt=attempt, code=code, message=message, param=param)


def record_stop(
    session: Session,
    job_id: str,
    *,
    attempt: int,
    step: int,
    has_checkpoint: bool,
    describe: Describe,
    disk_full: bool = False,
) -> JobStatus | None:
    """A run that stopped before its last step: the job goes where `after_stop` says (paused or queued) and
    continues from the checkpoint of `step`. The status is read in this transaction, so a pause or cancel that
    arrived meanwhile is honoured. Returns where the job went; None if the claim was lost or it was cancelled."""
    job = repo.get_job(session, None, job_id)
    if job is None or job.attempt != attempt or JobStatus(job.status) not in ACTIVE:
        return None
    status = JobStatus(job.status)
    target = after_stop(status, has_checkpoint=has_checkpoint, disk_full=disk_full)
    *through, _ = path_to(status, target)
    for hop in through:  # running → pausing → paused, in this one transaction: no one sees the job in between
        repo.transition_job(session, job_id, hop, sources=[status], attempt=attempt)
        status = hop
    fields = {"completed_steps": step, "estimated_finish": None}
    if not repo.transition_job(session, job_id, target, sources=[status], attempt=attempt, **fields):
        return None
    text, level = describe(target)
    repo.add_event(session, job_id, redact_paths(text), level=level, data={"step": step})
    return target


@dataclass
class RunEnd:
    """Everything recording a run's end needs: the claim, where the run's rows and files go, and why the run
    might have ended early (a shutdown that killed it, the database lost)."""

    claim: Claim
    org_id: str
    project: str | None
    sessions: sessionmaker[Session]
    files: JobFiles
    outcome: RunOutcome
    killed_by_shutdown: bool = False
    database_lost_after: float | None = None
    """Seconds the database was unreachable before the run stopped its trainer (None: it was not lost)."""

    def record(self, code: int, log_tail: Callable[[], str]) -> None:
        """Record how the trainer that exited with `code` ended (ClaimLost if the claim was taken over)."""
        outcome = self.outcome
        with self.sessions.begin() as session:
            job = repo.get_job(session, None, self.claim.job_id)
            if job is None or job.attempt != self.claim.attempt or job.status == JobStatus.CANCELLED:
                return
        stopped = outcome.stopped or {}
        if code == ExitCode.COMPLETED and outcome.completed is not None:
            self.succeed(outcome.completed)
        elif code == ExitCode.STOPPED:
            self.stopped(stopped)
        elif self.killed_by_shutdown:
            self.killed()
        elif code == ExitCode.FAILED and outcome.failed is not None:
            failed = outcome.failed
            self.fail(str(failed.get("code") or "training_error"), str(failed.get("message")), failed.get("param"))
        else:  # the log's path and tail are the operator's (they name server paths and hosts), not the owner's
            train_log = self.claim.spec_path.parent / "train.log"
            log.warning("job %s: trainer exited with %s; %s ends: %s", self.claim.job_id, code, train_log, log_tail())
            self.fail(
                "training_process_died",
                f"The training process exited with code {code} at step {outcome.last_step}; "
                "the operator can see why in the job's train.log.",
                None,
            )

    def stopped(self, stopped: dict[str, Any]) -> None:
        """The trainer checkpointed and exited: a pause, a worker shutdown, the database lost, or a full disk."""
        step = int(stopped.get("step") or self.outcome.last_step)
        disk_full = stopped.get("reason") == DISK_FULL_REASON

        def describe(target: JobStatus) -> tuple[str, str]:
            if disk_full:
                return str(stopped.get("message")), "error"
            if target is JobStatus.PAUSED:
                return f"Job paused at step {step}; its checkpoint is saved.", "info"
            if self.database_lost_after is not None:
                return (
                    f"Training stopped at step {step}: the database was unreachable for over "
                    f"{self.database_lost_after:g} s. The job is queued and continues from its last checkpoint.",
                    "info",
                )
            return (
                f"Training stopped at step {step} (worker shutting down); the job is queued and will continue.",
                "info",
            )

        self._record_stop(step, describe, has_checkpoint=True, disk_full=disk_full)  # a clean stop checkpoints first

    def killed(self) -> None:
        """The trainer was killed by our own shutdown: the job continues later from its last checkpoint."""
        steps = committed_checkpoint_steps(self.claim.spec_path.parent)
        step = steps[-1] if steps else 0

        def describe(target: JobStatus) -> tuple[str, str]:
            return (
                f"The training process did not stop in time when its worker shut down and was killed; the job "
                f"is {target.value} and continues from the checkpoint at step {step}.",
                "warn",
            )

        self._record_stop(step, describe, has_checkpoint=bool(steps))

    def _record_stop(self, step: int, describe: Describe, *, has_checkpoint: bool, disk_full: bool = False) -> None:
        with self.sessions.begin() as session:
            claim = self.claim
            record_stop(
                session,
                claim.job_id,
                attempt=claim.attempt,
                step=step,
                has_checkpoint=has_checkpoint,
                disk_full=disk_full,
                describe=describe,
            )

    def succeed(self, completed: dict[str, Any]) -> None:
        total = self.outcome.total_steps
        model_path = Path(str(completed.get("model_path", "")))
        results_path = Path(str(completed.get("results_path", "")))
        problem = verify_artefacts(int(completed.get("step", -1)), total, model_path, results_path)
        if problem:
            self.fail("incomplete_training", problem, None)
            return
        # with an object store, the artefacts are stored there before the job says it succeeded
        self.files.mirror_job_folder(self.claim.job_id, self.claim.spec_path.parent, include=is_artefact)
        blob = self.files.put_result_file(results_path)
        job_id, model_name = self.claim.job_id, self.claim.model_name
        try:
            with self.sessions.begin() as session:
                file_id = self.files.add_result_row(session, blob, org_id=self.org_id, project=self.project)
                ok = repo.transition_job(
                    session,
                    job_id,
                    JobStatus.SUCCEEDED,
                    attempt=self.claim.attempt,
                    fine_tuned_model=model_name,
                    model_path=str(model_path),
                    finished_at=int(time.time()),
                    estimated_finish=None,
                    trained_tokens=int(completed.get("trained_tokens") or self.outcome.trained_tokens),
                    completed_steps=total,
                    result_files=[file_id],
                )
                if not ok:
                    raise ClaimLost
                repo.add_event(session, job_id, f"New fine-tuned model created: {model_name}")
                if (alias := aliases_db.alias_imported_model(session, job_id)) is not None:  # `openft import`
                    repo.add_event(session, job_id, f"Alias {alias} now names {model_name}")
                repo.add_event(session, job_id, "The job has successfully completed")
        except BaseException:
            self.files.discard(blob.key)
            raise

    def fail(self, code: str, message: str, param: str | None) -> None:
        with self.sessions.begin() as session:
            record_failure(
                session,
                self.claim.job_id,
                attempt=self.claim.attempt,
                code=code,
                message=message,
                param=param,
                trained_tokens=self.outcome.trained_tokens,
            )


def verify_artefacts(step: int, total: int | None, model_path: Path, results_path: Path) -> str | None:
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
