"""Taking back jobs whose worker stopped renewing its lease (it died, or lost the database) (docs/design.md §2).

The step the job will resume from is the newest checkpoint in its folder (the dead worker may not have recorded
it); where the job goes is `after_stop` (paused if it was pausing and has a checkpoint, else queued). The new
run's trainer confirms the step ("Fine-tuning resumed from …") and the runner then supersedes the dead run's
metrics events for later steps (jobs/reconcile.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.domain.job_states import ACTIVE, JobStatus, after_stop
from openft.trainer_contract import committed_checkpoint_steps

log = logging.getLogger(__name__)


def recover_abandoned(
    sessions: sessionmaker[Session], reads: sessionmaker[Session], jobs_dir: Path, held: Iterable[str]
) -> list[str]:
    """Move every active job whose lease expired, other than those in `held` (this worker's own), back to the
    queue (or to paused); return their ids. A read first: the write lock only when there is work."""
    now = time.time()
    mine = set(held)
    with reads.begin() as session:
        abandoned = [job for job in repo.jobs_with_expired_lease(session, ACTIVE, now) if job.id not in mine]
    if not abandoned:
        return []
    recovered = []
    with sessions.begin() as session:
        for job in abandoned:
            steps = committed_checkpoint_steps(jobs_dir / job.id)
            step = steps[-1] if steps else 0
            target = after_stop(JobStatus(job.status), has_checkpoint=bool(steps))
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
            repo.add_event(session, job.id, text, level="warn", data=data)
            log.warning("job %s: %s (worker %s)", job.id, text, dead_worker)
            recovered.append(job.id)
    return recovered
