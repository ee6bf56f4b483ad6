"""After a crash, make a job's rows match the folder its new trainer resumes from (docs/design.md §3).

The database and the job folder can disagree: the dead worker recorded metrics events for steps after the
checkpoint the new run resumes from (they are trained again), and it missed messages still in its pipe (a
checkpoint committed, the steps just before it). The trainer's `started` message says where it resumes and
which checkpoints are on disk; `rows_with_folder` makes the rows match, so the events have every step exactly
once and the checkpoint list is the folder's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from openft.db import repositories as repo
from openft.db.tables import CheckpointRow
from openft.jobs.step_events import metrics_event
from openft.trainer_contract import METRICS_FILE, TrainJobSpec, emits_metrics, read_metrics

if TYPE_CHECKING:
    from openft.jobs.recorder import Claim

log = logging.getLogger(__name__)


def rows_with_folder(
    session: Session,
    claim: Claim,
    started: dict[str, Any],
    checkpoint_row: Callable[[dict[str, Any]], CheckpointRow],
) -> None:
    """In the transaction that records the `started` message:

    - metrics events after the resume step are superseded: those steps are trained again;
    - metrics events the trainer would have sent up to the resume step but the database lacks (the dead
      worker never read them) are written from metrics.jsonl, which the trainer has already cut back to
      the resume step, with the same contents;
    - checkpoint rows: one per epoch / pause checkpoint on disk (`checkpoint_row` builds it), none for pruned
      or damaged ones.
    """
    job_id = claim.job_id
    start = int(started.get("start_step") or 0)
    total = int(started["total_steps"])
    seen: set[int] = set()
    superseded = []
    for event_id, step in repo.metrics_event_steps(session, job_id):
        if step is None or step > start or step in seen:
            superseded.append(event_id)
        else:
            seen.add(step)
    repo.delete_events(session, superseded)
    if start > 0 and started.get("steps_per_epoch"):
        plan = {
            "total_steps": total,
            "steps_per_epoch": int(started["steps_per_epoch"]),
            "metrics_every": TrainJobSpec.read(claim.spec_path).metrics_every,
        }
        for logged in read_metrics(claim.spec_path.parent / METRICS_FILE):
            step = int(logged["step"])
            if step <= start and step not in seen and emits_metrics(step, **plan):
                session.add(metrics_event(job_id, logged, total))
    if superseded or (start > 0 and len(seen) < start):
        log.info("job %s: %d metrics events superseded on resume from step %d", job_id, len(superseded), start)
    on_disk = {int(c["step"]): c for c in started.get("checkpoints") or [] if c.get("kind") != "periodic"}
    for row in repo.checkpoints_of(session, job_id):
        if row.step_number not in on_disk:
            repo.delete_checkpoint_for_step(session, job_id, row.step_number)
        else:
            del on_disk[row.step_number]
    for checkpoint in on_disk.values():  # committed by a trainer whose worker died before recording it
        session.add(checkpoint_row(checkpoint))
