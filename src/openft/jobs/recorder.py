"""The trainer's progress messages → the job's rows: events, metrics, checkpoints, step counts (docs/design.md §3).

Every write is fenced by the claim's `attempt`: if another worker took the job over, the write is refused
(`ClaimLost`) and the run stops. A transient database error is retried (db/retry.py) for up to
`db_retry_seconds`, each try written so that a try that committed with its answer lost is not written twice.
How the run ends (`stopped`, `completed`, `failed`) is only noted here; jobs/outcome.py records it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.retry import retry_transient
from openft.db.tables import CheckpointRow, JobEventRow
from openft.domain.model_names import checkpoint_model_name
from openft.jobs import reconcile
from openft.jobs.step_events import metrics_event

log = logging.getLogger(__name__)
ETA_WINDOW = 20
"""Steps averaged for `estimated_finish` (recent steps reflect the current speed)."""
ENDINGS = ("stopped", "completed", "failed")
"""The messages that say how the trainer ends; the only ones still read once the database is gone."""


class ClaimLost(Exception):
    """Another worker holds this job now; this run must stop writing."""


@dataclass
class RunOutcome:
    """What the trainer has reported so far: how it ended (one of the three), and its progress."""

    stopped: dict[str, Any] | None = None
    completed: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    last_step: int = 0
    total_steps: int | None = None
    trained_tokens: int = 0
    step_seconds: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=ETA_WINDOW))


@dataclass(frozen=True)
class Claim:
    """The job a run writes for, and the claim (`attempt`) every write is fenced by."""

    job_id: str
    attempt: int
    model_name: str
    spec_path: Path
    worker_id: str | None = None


class ProgressRecorder:
    def __init__(
        self,
        claim: Claim,
        sessions: sessionmaker[Session],
        *,
        db_retry_seconds: float = 60.0,
        give_up: Callable[[], bool] = lambda: False,
    ):
        self.claim = claim
        self.outcome = RunOutcome()
        self.db_retry_seconds = db_retry_seconds
        self._sessions = sessions
        self._give_up = give_up

    def record(self, messages: list[dict[str, Any]]) -> None:
        """Record messages in order; a run of consecutive `metrics` is written in one transaction (with fast
        steps, or many jobs on SQLite's one writer, one commit per step would fall behind)."""
        while messages and not self._give_up():
            metrics = list(itertools.takewhile(lambda m: m["type"] == "metrics", messages))
            if metrics:
                self._on_metrics(metrics)
                messages = messages[len(metrics) :]
            else:
                self.handle(messages.pop(0))

    def handle(self, message: dict[str, Any]) -> None:
        """Record one progress message (ClaimLost if the claim was taken over)."""
        kind = message["type"]
        outcome = self.outcome
        if kind == "started":
            self._on_started(message)
        elif kind == "log":
            level = {"warn": "warn", "warning": "warn", "error": "error"}.get(str(message.get("level")), "info")
            event = repo.new_event(self.claim.job_id, str(message.get("message", "")), level=level)
            self._add_event_once(event, {}, "a log line")
        elif kind == "metrics":
            self._on_metrics([message])
        elif kind == "checkpoint":
            self._on_checkpoint(message)
        elif kind == "checkpoint_removed":

            def remove(_retrying: bool) -> None:  # a delete: the same on every try
                with self._write() as session:
                    repo.delete_checkpoint_for_step(session, self.claim.job_id, int(message["step"]))

            self._record(remove, "a removed checkpoint")
        elif kind == "stopped":
            outcome.stopped = message
        elif kind == "completed":
            outcome.completed = message
        elif kind == "failed":
            outcome.failed = message

    def note_ending(self, message: dict[str, Any]) -> None:
        """Without the database: keep only how the trainer ends (the next run reconciles the rest)."""
        if message["type"] in ENDINGS:
            self.handle(message)

    # the messages -----------------------------------------------------------------------------
    def _on_started(self, message: dict[str, Any]) -> None:
        outcome = self.outcome
        outcome.total_steps = int(message["total_steps"])
        outcome.last_step = start = int(message.get("start_step") or 0)
        text = (
            f"Fine-tuning started: {outcome.total_steps} steps over {message.get('n_examples')} examples."
            if start == 0
            else f"Fine-tuning resumed from the checkpoint at step {start} of {outcome.total_steps}."
        )
        data = {"start_step": start, **_pick(message, "num_threads"), "worker_id": self.claim.worker_id}

        def reconcile_rows(session: Session) -> None:
            reconcile.rows_with_folder(session, self.claim, message, self.checkpoint_row)

        self._add_event_once(
            repo.new_event(self.claim.job_id, text, data=data),
            {"total_steps": outcome.total_steps, "completed_steps": start},
            "the start",
            also=reconcile_rows,
        )

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
        job_id = self.claim.job_id

        def write(retrying: bool) -> None:
            with self._write(**fields) as session:
                recorded = {s for _id, s in repo.metrics_event_steps(session, job_id)} if retrying else set()
                session.add_all([metrics_event(job_id, m, total) for m in messages if int(m["step"]) not in recorded])

        self._record(write, "metrics")

    def _on_checkpoint(self, message: dict[str, Any]) -> None:
        step = int(message["step"])
        job_id = self.claim.job_id
        if message.get("kind") == "periodic":  # a resume point only: not listed, not a model (README)
            text = f"Recovery checkpoint saved at step {step} (used to resume after a crash; not listed)."
            self._add_event_once(repo.new_event(job_id, text, data={"step": step}), {}, "a checkpoint")
            return
        text = f"Checkpoint created at step {step}: {checkpoint_model_name(self.claim.model_name, step)}"

        def replace_row(session: Session) -> None:
            repo.delete_checkpoint_for_step(session, job_id, step)  # a rerun after a crash rewrites it
            session.add(self.checkpoint_row(message))

        event = repo.new_event(job_id, text, data={"step": step})
        self._add_event_once(event, {}, "a checkpoint", also=replace_row)

    def checkpoint_row(self, message: dict[str, Any]) -> CheckpointRow:
        """The listed checkpoint of a `checkpoint` message (or of a checkpoint the trainer found on disk)."""
        step = int(message["step"])
        metrics = {"step": step, **{k: v for k, v in (message.get("metrics") or {}).items() if k != "step"}}
        return CheckpointRow(
            id=ids.checkpoint_id(),
            job_id=self.claim.job_id,
            created_at=int(time.time()),
            step_number=step,
            metrics=metrics,
            fine_tuned_model_checkpoint=checkpoint_model_name(self.claim.model_name, step),
            path=str(message["path"]),
        )

    # fenced, retried writes -------------------------------------------------------------------
    def _write(self, **fields: Any) -> contextlib.AbstractContextManager[Session]:
        return _FencedWrite(self._sessions, self.claim, fields)

    def _record(self, write: Callable[[bool], None], what: str) -> None:
        """Run `write(retrying)` — one fenced transaction — again after each transient database error, for up to
        `db_retry_seconds` (db/retry.py); then `DatabaseUnavailable`. `retrying` is True from the second try on:
        the previous try may have committed with its answer lost, so the write checks what is already there
        and never adds a row twice."""
        tries = itertools.count()
        retry_transient(
            lambda: write(next(tries) > 0),
            self.db_retry_seconds,
            what=f"recording {what} of {self.claim.job_id}",
            give_up=self._give_up,
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


class _FencedWrite(contextlib.AbstractContextManager[Session]):
    """A transaction that first checks (and updates) the job under the run's claim."""

    def __init__(self, sessions: sessionmaker[Session], claim: Claim, fields: dict[str, Any]):
        self._claim = claim
        self._fields = fields
        self._cm = sessions.begin()

    def __enter__(self) -> Session:
        session = self._cm.__enter__()
        try:
            fenced = repo.update_job_fenced(session, self._claim.job_id, self._claim.attempt, **self._fields)
        except BaseException as error:  # e.g. the database is locked: end the transaction, give the connection back
            self._cm.__exit__(type(error), error, error.__traceback__)
            raise
        if not fenced:
            self._cm.__exit__(ClaimLost, ClaimLost(), None)
            raise ClaimLost
        return session

    def __exit__(self, *exc: Any) -> bool | None:
        return self._cm.__exit__(*exc)


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
