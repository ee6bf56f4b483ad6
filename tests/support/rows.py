"""Database rows the repository and service tests start from, built the way the service would leave them."""

from __future__ import annotations

import time

from openft import ids
from openft.db.tables import JobRow
from openft.domain.job_states import JobStatus


def job_row(org_id: str, status: JobStatus = JobStatus.QUEUED, metadata: dict[str, str] | None = None) -> JobRow:
    """A supervised job of the tiny model in `status`, with a fresh id and its model name."""
    job_id = ids.job_id()
    return JobRow(
        id=job_id,
        organization_id=org_id,
        model="tiny",
        training_file="file-x",
        status=status.value,
        created_at=int(time.time()),
        updated_at=time.time(),
        model_name=f"ft:tiny:org::{job_id}",
        method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        seed=1,
        metadata_=metadata,
        result_files=[],
    )
