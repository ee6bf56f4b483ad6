"""Queue events: "Queued: position 2; estimated start in ~4 min", written when a queued job's place changes
meaningfully (the rule and the estimates: jobs/queue.py).

Decided on a read; written under the write lock (SQLite) or an advisory lock (PostgreSQL) after checking again
that no other worker has just reported the same, so no report is made twice.
"""

from __future__ import annotations

import time

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.tables import JobEventRow
from openft.jobs import queue

QUEUE_REPORT_LOCK_KEY = 0x0F7_D9
"""PostgreSQL advisory lock: one worker at a time writes queue events (no duplicates between workers)."""


def report_queue(sessions: sessionmaker[Session], reads: sessionmaker[Session]) -> int:
    """Write the queue events that are due; how many."""
    now = time.time()
    with reads.begin() as session:
        running, queued, finished = repo.queue_snapshot(session)
        if not queued:
            return 0
        estimates = queue.estimate_queue(running, queued, finished, now)
        previous = repo.latest_events_starting(session, [job.id for job in queued], queue.REPORT_PREFIX)
    due = [job for job in queued if _due(previous.get(job.id), estimates[job.id], job.attempt, now)]
    if not due:
        return 0
    written = 0
    with sessions.begin() as session:
        if session.get_bind().dialect.name == "postgresql":
            got = session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": QUEUE_REPORT_LOCK_KEY})
            if not got.scalar():
                return 0  # another worker is reporting right now
        latest = repo.latest_events_starting(session, [job.id for job in due], queue.REPORT_PREFIX)
        for job in due:
            estimate, last = estimates[job.id], latest.get(job.id)
            if _due(last, estimate, job.attempt, now):
                data = queue.report_data(estimate, job.attempt, last.data if last is not None else None)
                repo.add_event(session, job.id, queue.report_message(estimate, now), data=data)
                written += 1
    return written


def _due(last: JobEventRow | None, estimate: queue.QueueEstimate, attempt: int, now: float) -> bool:
    return queue.worth_reporting(last.data if last is not None else None, estimate, attempt, now)
