"""Building event rows: one helper so every writer (service, worker, runner) makes them alike."""

from __future__ import annotations

import time
from typing import Any

from openft import ids
from openft.db.tables import JobEventRow


def new_event(
    job_id: str, message: str, *, level: str = "info", type: str = "message", data: dict[str, Any] | None = None
) -> JobEventRow:
    return JobEventRow(
        id=ids.event_id(),
        job_id=job_id,
        created_at=int(time.time()),
        level=level,
        message=message,
        type=type,
        data=data,
    )
