"""Ending a job as failed: one helper for every place that decides it (validation, training, start-up)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.orm import Session

from openft.db import repositories as repo
from openft.jobs.events import new_event
from openft.jobs.states import JobStatus


def record_failure(
    session: Session, job_id: str, *, attempt: int, code: str, message: str, param: str | None, **fields: Any
) -> bool:
    """Move the job to `failed` with its `error`, under the caller's claim; False if the claim was lost."""
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
