"""Ending a job's run as failed, or paused by the trainer itself: one helper for every place that decides it
(validation, training, start-up).

A failure's message is read by the job's owner: it is stored without server paths (`openft.redact`), however
it was built (many come from exception texts, which name files freely).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from openft.db import repositories as repo
from openft.jobs.events import new_event
from openft.jobs.states import JobStatus
from openft.redact import redact_paths


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
        worker_id=None,
        lease_expires_at=None,
        **fields,
    )
    if ok:
        session.add(new_event(job_id, message, level="error"))
    return ok


def record_pause(session: Session, job_id: str, *, attempt: int, message: str, step: int, **fields: Any) -> bool:
    """Pause a job whose trainer stopped on its own account (the disk filled up while it checkpointed): the
    job did nothing wrong and continues from its last checkpoint once resumed, so it is `paused`, not failed.

    A running job goes through `pausing` (the one legal way to `paused`), both in this transaction, so no one
    sees it in between; one already `pausing` (the user paused it meanwhile) goes straight on. `message` is
    the `error`-level event that says why; False if the claim was lost.
    """
    repo.transition_job(session, job_id, JobStatus.PAUSING, sources=[JobStatus.RUNNING], attempt=attempt)
    ok = repo.transition_job(
        session,
        job_id,
        JobStatus.PAUSED,
        sources=[JobStatus.PAUSING],
        attempt=attempt,
        completed_steps=step,
        estimated_finish=None,
        worker_id=None,
        lease_expires_at=None,
        **fields,
    )
    if ok:
        session.add(new_event(job_id, redact_paths(message), level="error", data={"step": step}))
    return ok
