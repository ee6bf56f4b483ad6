"""The job state machine: the one table of legal transitions, and the rules that pick a target from it
(docs/design.md §2; the extra statuses on the wire: docs/api-compatibility.md §3).

Everything that decides a job's next status is here: which transitions are legal (`TRANSITIONS`,
`check_transition`), what each user action asks for (`ACTION_TARGET`, `action_sources`), where a job goes when
its training stops before the end (`after_stop`), and which statuses hold a worker's claim (`holds_claim`).
The repository (db/repositories.py) is the only writer: every status UPDATE it makes is conditional on a
source this table allows, so a transition that is not in the table cannot happen, whoever asks — a user, the
worker, or recovery after a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class JobStatus(enum.StrEnum):
    VALIDATING_FILES = "validating_files"  # the worker is checking the training/validation files
    QUEUED = "queued"  # valid; waiting for a worker (also after resume and after recovery)
    RUNNING = "running"  # a worker's training process owns it
    PAUSING = "pausing"  # pause requested; the trainer finishes its step and writes a checkpoint
    PAUSED = "paused"  # checkpoint committed, process gone; stays here until resumed or cancelled
    SUCCEEDED = "succeeded"  # every planned step ran and the model and result file exist
    FAILED = "failed"  # `error` says why
    CANCELLED = "cancelled"  # by the user


S = JobStatus
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
ACTIVE = frozenset({S.RUNNING, S.PAUSING})
"""A job in these holds a training slot (it counts against its organization's `max_running_jobs`)."""
WAITING = frozenset({S.VALIDATING_FILES, S.QUEUED})
"""A job in these waits for a worker (it counts against its organization's `max_queued_jobs`)."""

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.VALIDATING_FILES: frozenset({S.QUEUED, S.FAILED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED, S.CANCELLED}),
    # running → queued: the worker stopped (shutdown) or died, and the job goes back to the queue
    S.RUNNING: frozenset({S.PAUSING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    # pausing → succeeded: the last step finished before the trainer saw the pause request
    S.PAUSING: frozenset({S.PAUSED, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.QUEUED}),
    S.PAUSED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A caller asked for a transition the table does not have: a bug in the caller, never the user's doing
    (user actions are checked against `action_sources` first and refused with a 409 `invalid_job_state`)."""

    def __init__(self, source: JobStatus, target: JobStatus):
        super().__init__(f"illegal job transition {source.value} → {target.value}")
        self.source = source
        self.target = target


def is_legal(source: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[source]


def check_transition(source: JobStatus, target: JobStatus) -> None:
    """Raise `IllegalTransition` unless `source → target` is in the table."""
    if not is_legal(source, target):
        raise IllegalTransition(source, target)


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which `target` may be reached (for conditional UPDATEs)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def legal_sources(target: JobStatus, wanted: Iterable[JobStatus] | None = None) -> frozenset[JobStatus]:
    """The statuses a conditional UPDATE to `target` may start from: `wanted` (default: all of them), each
    checked against the table — asking for an illegal one is a bug (`IllegalTransition`), not a silent no-op."""
    if wanted is None:
        return sources_of(target)
    chosen = frozenset(wanted)
    for source in chosen:
        check_transition(source, target)
    return chosen


def holds_claim(status: JobStatus) -> bool:
    """Whether a job in `status` may be held by a worker (a lease and its `worker_id`). Every transition to
    any other status releases the claim (db/repositories.py does it with the status change itself)."""
    return status in (S.VALIDATING_FILES, S.RUNNING, S.PAUSING)


def after_stop(status: JobStatus, *, has_checkpoint: bool, disk_full: bool = False) -> JobStatus:
    """Where a job goes when its training stopped before the last step, for any reason other than a failure or a
    cancel: the trainer checkpointed and exited (pause, worker shutdown, the database was lost), it was killed at
    shutdown, or its worker died and recovery took the job back.

    - `paused` when its owner asked for a pause (`status` is `pausing`) and there is a checkpoint to resume from;
    - `paused` when the trainer stopped because the disk filled up: queued again, it would fill the disk again;
    - otherwise `queued`: the job did nothing wrong, and continues from its newest checkpoint (or from step 0)
      on whichever worker claims it next.
    """
    if disk_full or (status is S.PAUSING and has_checkpoint):
        return S.PAUSED
    return S.QUEUED


def path_to(status: JobStatus, target: JobStatus) -> tuple[JobStatus, ...]:
    """The transitions that take a job from `status` to `target` in one go: `(target,)` when legal; `running →
    paused` goes through `pausing` (the one legal way to `paused`), both written in one transaction so no one
    sees the job in between."""
    if is_legal(status, target):
        return (target,)
    if status is S.RUNNING and target is S.PAUSED:
        return (S.PAUSING, S.PAUSED)
    raise IllegalTransition(status, target)


class UserAction(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


ACTION_TARGET = {UserAction.PAUSE: S.PAUSING, UserAction.RESUME: S.QUEUED, UserAction.CANCEL: S.CANCELLED}
"""What each user action moves a job to; legal from any status whose TRANSITIONS allow the target,
except where `action_sources` narrows it (a resume only from `paused`, a pause only when running)."""

_ACTION_SOURCES = {
    UserAction.PAUSE: frozenset({S.RUNNING}),
    UserAction.RESUME: frozenset({S.PAUSED}),
    UserAction.CANCEL: frozenset(s for s in JobStatus if s not in TERMINAL),
}


def action_sources(action: UserAction) -> frozenset[JobStatus]:
    """The statuses in which a user may take `action`."""
    sources = _ACTION_SOURCES[action]
    assert all(is_legal(s, ACTION_TARGET[action]) for s in sources), "action table disagrees with TRANSITIONS"
    return sources
