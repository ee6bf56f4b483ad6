"""Polling helpers for tests that watch a job through the SDK."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from openai import OpenAI

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_for(
    predicate: Callable[[], Any], timeout: float = 120, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_for_status(client: OpenAI, job_id: str, statuses: Iterable[str], timeout: float = 180) -> Any:
    wanted = set(statuses)
    seen: list[str] = []

    def check() -> Any:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if not seen or seen[-1] != job.status:
            seen.append(job.status)
        if job.status in wanted:
            return job
        if job.status in TERMINAL:
            raise AssertionError(f"job ended {job.status} (error={job.error}) while waiting for {wanted}; saw {seen}")
        return None

    return wait_for(check, timeout=timeout, what=f"job {job_id} to reach {wanted}")


def all_events(client: OpenAI, job_id: str) -> list[Any]:
    """Every event, oldest first, paging through the SDK's cursor."""
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))


def latest_step(client: OpenAI, job_id: str) -> int:
    """The step of the job's newest metrics event among its recent events (0 before the first)."""
    events = client.fine_tuning.jobs.list_events(job_id, limit=20)
    return next((e.data["step"] for e in events if e.type == "metrics"), 0)
