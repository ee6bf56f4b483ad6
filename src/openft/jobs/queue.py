"""Where a queued job stands: its position, when it should start, when it should finish.

The rule (README, "Running workers"):

- **Order.** Organizations take turns: the next claim serves the organization that has waited longest since
  its last claim, and its oldest job (domain/claim_order.py; the claim query in db/repositories.py does the same).
- **Slots.** Jobs are claimed in that order, one per free slot. The slots are the running (and pausing) jobs
  whose lease is live: while jobs wait, every live worker is full (a worker with a free slot claims within
  a poll interval), so this count is the job slots of the workers that are alive, with no registry of
  workers to keep. With no live running job at all, one slot is assumed (a worker will pick the queue up,
  if one runs; the estimate cannot know that none does).
- **Speed.** Seconds per training example: from each running job's `estimated_finish` (the mean of its
  recent steps) over the examples it has left; when no running job has one yet, from recently succeeded
  jobs (wall time from start to finish over the examples they trained: pauses and model loading make this
  pessimistic). Jobs of the same base model are preferred; unknown when nothing has run yet.
- **Simulation.** A running job frees its slot at its `estimated_finish` (pausing: now). Each queued job in
  claim order takes the slot that frees first: `estimated_start`; it holds it for its steps left ×
  batch size × seconds per example: `estimated_finish`. Where a needed number is unknown, so are the
  estimates from there on.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus

REPORT_PREFIX = "Queued:"
"""Every queue event's message starts with this (the worker finds the last report by it)."""
MIN_REPORTED_SHIFT_SECONDS = 120.0
REPORTED_SHIFT_FRACTION = 0.25
"""A new event when the estimated start moved by more than this share of the wait (and 2 minutes)."""
REPORTED_POSITION_FRACTION = 0.25
"""A new event when the position moved by at least this share of the last reported one (and 1)."""
MAX_REPORTS_PER_STAY = 8
"""Queue events per job per stay in the queue, at most: every claim moves every queued job up one place, so
reporting each move made Q²/2 events for Q queued jobs; with this cap the total is at most 8 Q. The last one
is kept for "position 1"."""


@dataclass(frozen=True)
class QueueEstimate:
    position: int
    """1-based: 1 is the next job to start."""
    length: int
    """Queued jobs in all."""
    estimated_start: int | None
    estimated_finish: int | None


def _live(job: JobRow, now: float) -> bool:
    """Whether the job's worker still renews its lease (a dead worker's job neither finishes nor shows speed)."""
    return job.lease_expires_at is not None and job.lease_expires_at >= now


def _batch_size(job: JobRow) -> int:
    value = (job.resolved_hyperparameters or {}).get("batch_size")
    return value if isinstance(value, int) and value > 0 else 1


def _examples_left(job: JobRow) -> int | None:
    if job.total_steps is None:
        return None
    return max(0, job.total_steps - (job.completed_steps or 0)) * _batch_size(job)


def _seconds_per_example(running: Sequence[JobRow], finished: Sequence[JobRow], now: float) -> dict[str | None, float]:
    """Seconds per training example by base model (key None: over every model)."""
    samples: list[tuple[str, float]] = []
    for job in running:
        left = _examples_left(job)
        if job.status == JobStatus.RUNNING and job.estimated_finish and left and _live(job, now):
            samples.append((job.base, max(0.0, job.estimated_finish - now) / left))
    if not samples:
        for job in finished:
            trained = (job.total_steps or 0) * _batch_size(job)
            if job.started_at and job.finished_at and trained:
                samples.append((job.base, max(0, job.finished_at - job.started_at) / trained))
    by_model: dict[str | None, list[float]] = {}
    for base, value in samples:
        by_model.setdefault(base, []).append(value)
        by_model.setdefault(None, []).append(value)
    return {key: sum(values) / len(values) for key, values in by_model.items()}


def estimate_queue(
    running: Sequence[JobRow], queued: Sequence[JobRow], finished: Sequence[JobRow], now: float
) -> dict[str, QueueEstimate]:
    """An estimate for each queued job (`queued` in claim order); see the module docstring for the rule."""
    speed = _seconds_per_example(running, finished, now)

    def duration(job: JobRow) -> float:
        per_example = speed.get(job.base, speed.get(None))
        left = _examples_left(job)
        return math.inf if per_example is None or left is None else left * per_example

    slots: list[float] = []
    for job in running:
        if not _live(job, now):
            continue  # its worker is gone: it will be queued again, not finish
        if job.status == JobStatus.PAUSING:
            slots.append(0.0)
        elif job.estimated_finish is not None:
            slots.append(max(0.0, job.estimated_finish - now))
        else:
            slots.append(duration(job))
    if not slots:
        slots.append(0.0)
    heapq.heapify(slots)
    estimates = {}
    for position, job in enumerate(queued, start=1):
        start = heapq.heappop(slots)
        finish = start + duration(job)
        heapq.heappush(slots, finish)
        estimates[job.id] = QueueEstimate(
            position=position,
            length=len(queued),
            estimated_start=None if math.isinf(start) else int(now + start),
            estimated_finish=None if math.isinf(finish) else int(now + finish) + 1,
        )
    return estimates


def _wait(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    return f"~{minutes} min" if minutes < 120 else f"~{minutes / 60:.1f} h"


def report_message(estimate: QueueEstimate, now: float) -> str:
    """ "Queued: position 2; estimated start in ~4 min". Not "of N": the length of the queue is other
    organizations' business (how many jobs they have waiting), and a job's owner reads its events."""
    where = f"{REPORT_PREFIX} position {estimate.position}"
    if estimate.estimated_start is None:
        return f"{where}; no start estimate yet (the jobs ahead have not shown their speed)"
    wait = estimate.estimated_start - now
    return f"{where}; estimated start {'now' if wait < 1 else 'in ' + _wait(wait)}"


def report_data(estimate: QueueEstimate, attempt: int, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The queue event's `data`; `attempt` ties it to one stay in the queue (each claim bumps it), `report`
    counts the stay's events (`previous`: the data of the stay's last one)."""
    same_stay = previous is not None and previous.get("attempt") == attempt
    return {
        "queue_position": estimate.position,
        "estimated_start": estimate.estimated_start,
        "estimated_finish": estimate.estimated_finish,
        "attempt": attempt,
        "report": _reports(previous) + 1 if previous is not None and same_stay else 1,
    }


def _reports(previous: dict[str, Any]) -> int:
    count = previous.get("report")
    return count if isinstance(count, int) else 1


def worth_reporting(previous: dict[str, Any] | None, estimate: QueueEstimate, attempt: int, now: float) -> bool:
    """A new queue event when the job just entered the queue; reached position 1; moved by a quarter of its
    last reported position (and at least one place); or its estimated start became known or moved by more
    than a quarter of the wait (and 2 minutes). Not on every poll, and at most `MAX_REPORTS_PER_STAY` per
    stay (the last one kept for position 1), so Q queued jobs make O(Q) events in all, not O(Q²)."""
    if not previous or previous.get("attempt") != attempt:
        return True
    reports = _reports(previous)
    before_position = previous.get("queue_position")
    if estimate.position == 1 and before_position != 1:
        return reports < MAX_REPORTS_PER_STAY
    if reports >= MAX_REPORTS_PER_STAY - 1:
        return False
    if isinstance(before_position, int):
        if abs(estimate.position - before_position) >= max(1.0, REPORTED_POSITION_FRACTION * before_position):
            return True
    elif before_position != estimate.position:
        return True
    before, after = previous.get("estimated_start"), estimate.estimated_start
    if (before is None) != (after is None):
        return True
    if before is None or after is None:
        return False
    allowed = max(MIN_REPORTED_SHIFT_SECONDS, REPORTED_SHIFT_FRACTION * max(0.0, before - now))
    return abs(after - before) > allowed
