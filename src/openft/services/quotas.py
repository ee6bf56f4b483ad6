"""Per-organization limits: training jobs running at once, jobs waiting, bytes of stored files.

Kept on the organization's row (migration 0006) and set by the operator with `openft keys create --max-…`
or `openft orgs set-limits` (README, "Limits"); None means unlimited. They hold for every key of the
organization, in every server and worker sharing the database:

- `max_queued_jobs`: creating a job while the organization already has that many waiting (validating files
  or queued) is refused: 429 `quota_exceeded` (no `Retry-After`: only a job leaving the queue lifts it);
- `max_storage_bytes`: an upload that would take the organization's stored files (uploads and result files)
  over it is refused the same way, `param: "file"`, and its bytes are not kept;
- `max_running_jobs`: enforced by the worker's claim (db/repositories.py `claim_next_job`), which skips an
  organization at its limit; its jobs simply wait.

The checks run in the transaction that adds the job or file row, with the organization's row locked on
PostgreSQL (`FOR UPDATE`; SQLite's write transactions are serialized anyway), so two concurrent requests
cannot both take the last place.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db.tables import FileRow, JobRow, OrganizationRow, UploadPartRow, UploadRow
from openft.errors import InvalidRequest, NotFound, QuotaExceeded

GB = 1_000_000_000
"""`--max-storage-gb` counts decimal gigabytes, as disks are sold."""
MAX_JOBS_LIMIT = 1_000_000


@dataclass(frozen=True)
class OrganizationLimits:
    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    max_storage_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def limits_from_options(
    max_running_jobs: int | None, max_queued_jobs: int | None, max_storage_gb: float | None
) -> dict[str, int | None]:
    """The limits given on a command line (None: not given), checked: jobs 0…1,000,000, storage ≥ 0 GB."""
    given: dict[str, int | None] = {}
    for name, value in (("max_running_jobs", max_running_jobs), ("max_queued_jobs", max_queued_jobs)):
        if value is not None:
            if not 0 <= value <= MAX_JOBS_LIMIT:
                raise InvalidRequest(f"{name} must be between 0 and {MAX_JOBS_LIMIT}.", param=name)
            given[name] = value
    if max_storage_gb is not None:
        if not 0 <= max_storage_gb <= 1e9:
            raise InvalidRequest("max_storage_gb must be 0 or more.", param="max_storage_gb")
        given["max_storage_bytes"] = int(max_storage_gb * GB)
    return given


def limits_of(row: OrganizationRow) -> OrganizationLimits:
    return OrganizationLimits(row.max_running_jobs, row.max_queued_jobs, row.max_storage_bytes)


def set_limits(sessions: sessionmaker[Session], org_id: str, limits: dict[str, int | None]) -> OrganizationLimits:
    """Change the given limits of an organization (a value of None makes that one unlimited again)."""
    with sessions.begin() as session:
        row = session.scalar(select(OrganizationRow).where(OrganizationRow.id == org_id).with_for_update())
        if row is None:
            raise NotFound(f"No such organization: {org_id}", param="org")
        for name, value in limits.items():
            setattr(row, name, value)
        session.flush()
        return limits_of(row)


def check_queued_jobs(session: Session, org_id: str) -> None:
    """Refuse one more waiting job of `org_id` when it is at `max_queued_jobs`."""
    organization = repo.lock_organization(session, org_id)
    limit = organization.max_queued_jobs if organization is not None else None
    if limit is None:
        return
    waiting = session.scalar(
        select(func.count()).where(JobRow.organization_id == org_id, JobRow.status.in_(repo.WAITING_STATUSES))
    )
    if int(waiting or 0) >= limit:
        raise QuotaExceeded(
            f"You have exceeded your quota of queued fine-tuning jobs: your organization may have {limit} "
            f"jobs waiting (validating files or queued) at once (max_queued_jobs). Wait for one to start or "
            "cancel one.",
        )


def check_storage(session: Session, org_id: str, adding_bytes: int, *, excluding_upload: str | None = None) -> None:
    """Refuse `adding_bytes` more stored bytes for `org_id` when they would go over `max_storage_bytes`.

    Stored bytes are its files plus the parts of its pending uploads (services/uploads.py): parts take disk as
    they arrive, so unfinished uploads cannot be used to store past the limit. `excluding_upload` leaves out
    the upload being completed, whose parts become the file being added."""
    organization = repo.lock_organization(session, org_id)
    limit = organization.max_storage_bytes if organization is not None else None
    if limit is None:
        return
    files = select(func.coalesce(func.sum(FileRow.bytes), 0)).where(FileRow.organization_id == org_id)
    parts = (
        select(func.coalesce(func.sum(UploadPartRow.bytes), 0))
        .join(UploadRow, UploadRow.id == UploadPartRow.upload_id)
        .where(UploadRow.organization_id == org_id, UploadRow.status == "pending")
    )
    if excluding_upload is not None:
        parts = parts.where(UploadRow.id != excluding_upload)
    stored = int(session.scalar(files) or 0) + int(session.scalar(parts) or 0)
    if stored + adding_bytes > limit:
        raise QuotaExceeded(
            f"You have exceeded your storage quota: your organization stores {stored} bytes of files and this "
            f"upload of {adding_bytes} bytes would go over its limit of {limit} bytes (max_storage_gb). Delete "
            "files you no longer need.",
            param="file",
        )
