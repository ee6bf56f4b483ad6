"""The order in which queued jobs are claimed: organizations take turns, FIFO within each (docs/design.md §2).

The claim query (db/repositories.py `_fair_candidates`) takes one job at a time in this order; the queue
estimates (jobs/queue.py) need the whole order at once, which this simulates. Kept apart from both so the
rule has one home; the two are tested to agree (tests/jobs/test_fairness.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar


class QueuedJob(Protocol):
    @property
    def organization_id(self) -> str: ...

    @property
    def seq(self) -> int | None: ...


Job = TypeVar("Job", bound=QueuedJob)


def claim_order(queued: Sequence[Job], last_claimed: Mapping[str, float | None]) -> list[Job]:
    """`queued` (oldest first) in the order claims will take them: round-robin over organizations, the one
    whose last claim (`last_claimed`, None: never) is oldest first, FIFO within each organization."""
    by_org: dict[str, list[Job]] = {}
    for job in queued:
        by_org.setdefault(job.organization_id, []).append(job)
    # (claimed in this simulation?, when, oldest job's seq): simulated claims come after every real one
    turns = [(0, last_claimed.get(org) or 0.0, jobs[0].seq or 0, org) for org, jobs in by_org.items()]
    heapq.heapify(turns)
    ordered: list[Job] = []
    taken = {org: 0 for org in by_org}
    while turns:
        _simulated, _when, _seq, org = heapq.heappop(turns)
        jobs = by_org[org]
        ordered.append(jobs[taken[org]])
        taken[org] += 1
        if taken[org] < len(jobs):
            heapq.heappush(turns, (1, float(len(ordered)), jobs[taken[org]].seq or 0, org))
    return ordered
