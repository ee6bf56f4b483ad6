"""What the worker needs from the rest of the service, as interfaces the container fills in.

`jobs` sits below `services` (api → services → jobs): it may not import the files service, yet every file a
job reads or writes must go through it, so uploads, results and expiry follow one set of rules
(services/files.py). The container hands the worker its `FileService`, which has these methods.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Protocol

from sqlalchemy.orm import Session

from openft.storage import StoredBlob


class JobFiles(Protocol):
    def snapshot(self, org_id: str, file_id: str, dest: Path) -> bool:
        """Copy an organization's file into a job's folder; False when the file is gone."""
        ...

    def put_result_file(self, path: Path) -> StoredBlob:
        """Store a result CSV durably (no row yet)."""
        ...

    def add_result_row(self, session: Session, blob: StoredBlob, *, org_id: str, project: str | None) -> str:
        """Record a stored result as a file in the caller's transaction; its file id."""
        ...

    def mirror_job_folder(self, job_id: str, folder: Path, include: Callable[[PurePosixPath], bool]) -> None:
        """Store a succeeded job's artefacts (the files `include` accepts) in the object store, when there is one
        (a no-op on the data folder, where the job folder is the artefacts' home)."""
        ...

    def discard(self, file_id: str) -> None:
        """Remove a stored blob whose row was never committed."""
        ...

    def delete_expired(self) -> list[str]:
        """Delete expired files; their ids."""
        ...

    def mirror_checkpoint(self, job_id: str, job_folder: Path, step: int) -> None:
        """With an object store: store the job's committed checkpoint of `step` (its folder is then a cache)."""
        ...

    def forget_checkpoint(self, job_id: str, step: int) -> None:
        """With an object store: delete the stored checkpoint the trainer pruned."""
        ...

    def forget_job_checkpoints(self, job_id: str) -> None:
        """With an object store: delete every stored checkpoint of a finished job."""
        ...

    def restore_checkpoint(self, job_id: str, job_folder: Path) -> int | None:
        """With an object store: pull the newest stored checkpoint into the job folder unless it has one as new."""
        ...
