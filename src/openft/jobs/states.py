"""The job state machine: one table of legal transitions (docs/api-compatibility.md §3).

Every status change in the code base goes through `check_transition` (or a conditional UPDATE
whose `WHERE status IN (…)` comes from `sources_of`), so a transition that is not in this table
cannot happen, whoever asks: a user, the worker, or recovery after a crash.
"""

from __future__ import annotations

import enum


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


class UserAction(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


ACTION_TARGET = {UserAction.PAUSE: S.PAUSING, UserAction.RESUME: S.QUEUED, UserAction.CANCEL: S.CANCELLED}
"""What each user action moves a job to; legal from any status whose TRANSITIONS allow the target,
except where `action_allowed` narrows it (a resume only from `paused`, a pause only when running)."""

_ACTION_SOURCES = {
    UserAction.PAUSE: frozenset({S.RUNNING}),
    UserAction.RESUME: frozenset({S.PAUSED}),
    UserAction.CANCEL: frozenset(s for s in JobStatus if s not in TERMINAL),
}


def is_legal(source: JobStatus, target: JobStatus) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which `target` may be reached (for conditional UPDATEs)."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def action_sources(action: UserAction) -> frozenset[JobStatus]:
    """The statuses in which a user may take `action`."""
    sources = _ACTION_SOURCES[action]
    assert all(is_legal(s, ACTION_TARGET[action]) for s in sources), "action table disagrees with TRANSITIONS"
    return sources
