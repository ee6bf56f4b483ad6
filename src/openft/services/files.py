"""Files: store uploads durably, list, read and delete them, per organization.

Read methods take `org_id: str | None`: the caller's organization, or None for an admin key, which sees
every organization's files. Another organization's file is the same 404 as a file nobody uploaded.
"""

from __future__ import annotations

import builtins
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import FileRow
from openft.errors import InvalidRequest, NotFound
from openft.protocol.common import DeletedObject, IdListPage
from openft.protocol.files import (
    EXPIRES_MAX_SECONDS,
    EXPIRES_MIN_SECONDS,
    RESULT_PURPOSE,
    UPLOAD_PURPOSES,
    FileObject,
)
from openft.services import quotas
from openft.services.checkpoint_mirror import CheckpointMirror
from openft.storage import BlobStore, BlobWriter, StoredBlob, folder_mirror

MAX_FILENAME_CHARS = 255
ORPHAN_BLOB_SECONDS = 3600
"""A stored blob with no row is swept once it is this old: a writer commits the blob and then its row within
moments, so an hour-old blob without one was left by a process killed in between (or by a delete killed
after its row went), and nothing can ever reach it."""
MAX_LIST_LIMIT = 10_000


def file_to_wire(row: FileRow) -> FileObject:
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=row.created_at,
        expires_at=row.expires_at,
        filename=row.filename,
        purpose=row.purpose,
        status="processed",
    )


def clean_filename(name: str | None) -> str:
    """A display name only (never a path): last path component, no control characters, bounded."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        name = "upload.jsonl"
    return name[:MAX_FILENAME_CHARS]


@dataclass
class FileContent:
    filename: str
    size: int
    chunks: Iterator[bytes]


class FileService:
    def __init__(self, sessions: sessionmaker[Session], store: BlobStore):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)  # get/list/content never take SQLite's write lock (db/engine.py)
        self._store = store
        self._job_folders = folder_mirror(store, "jobs")  # None on the data folder
        checkpoints = folder_mirror(store, "checkpoints")
        self._checkpoints = CheckpointMirror(checkpoints) if checkpoints is not None else None

    def create(
        self,
        org_id: str,
        *,
        purpose: str | None,
        filename: str | None,
        writer: BlobWriter | None,
        expires_after_anchor: str | None = None,
        expires_after_seconds: str | None = None,
        project: str | None = None,
        quota_excluding_upload: str | None = None,
    ) -> FileObject:
        """Commit an uploaded blob and record it; the row is written only after the bytes are durable.
        `quota_excluding_upload`: the upload this file is assembled from, whose parts the quota must not count
        beside the file they become (services/quotas.py)."""
        try:
            if writer is None:
                raise InvalidRequest("The request has no 'file' part.", param="file")
            if not purpose:
                raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise InvalidRequest(
                    f"Invalid purpose {purpose!r}; expected one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose"
                )
            expires_at = self._expiry(expires_after_anchor, expires_after_seconds)
            if writer.size == 0:
                raise InvalidRequest("The uploaded file is empty.", param="file")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        file_id = ids.file_id()
        blob = writer.commit(file_id)
        row = FileRow(
            id=file_id,
            organization_id=org_id,
            project=project,
            filename=clean_filename(filename),
            purpose=purpose,
            bytes=blob.size,
            sha256=blob.sha256,
            created_at=int(time.time()),
            expires_at=expires_at,
            status="processed",
        )
        try:
            with self._sessions.begin() as session:
                # 429 quota_exceeded over max_storage_gb
                quotas.check_storage(session, org_id, blob.size, excluding_upload=quota_excluding_upload)
                session.add(row)
        except BaseException:
            self._store.delete(file_id)
            raise
        return file_to_wire(row)

    @staticmethod
    def _expiry(anchor: str | None, seconds: str | None) -> int | None:
        if anchor is None and seconds is None:
            return None
        if anchor != "created_at":
            raise InvalidRequest("expires_after[anchor] must be 'created_at'.", param="expires_after.anchor")
        try:
            value = int(seconds or "")
        except ValueError:
            raise InvalidRequest("expires_after[seconds] must be an integer.", param="expires_after.seconds") from None
        if not EXPIRES_MIN_SECONDS <= value <= EXPIRES_MAX_SECONDS:
            raise InvalidRequest(
                f"expires_after[seconds] must be between {EXPIRES_MIN_SECONDS} and {EXPIRES_MAX_SECONDS}.",
                param="expires_after.seconds",
            )
        return int(time.time()) + value

    def get(self, org_id: str | None, file_id: str) -> FileObject:
        with self._reads.begin() as session:
            return file_to_wire(self._row(session, org_id, file_id))

    @staticmethod
    def _row(session: Session, org_id: str | None, file_id: str) -> FileRow:
        row = repo.get_file(session, org_id, file_id)
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return row

    def list(
        self, org_id: str | None, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> IdListPage[FileObject]:
        with self._reads.begin() as session:
            page = repo.list_files(
                session, org_id, purpose=purpose, after=after, limit=limit, newest_first=order == "desc"
            )
            data = [file_to_wire(row) for row in page.data]
        return IdListPage[FileObject](
            data=data,
            has_more=page.has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )

    def content(self, org_id: str | None, file_id: str) -> FileContent:
        with self._reads.begin() as session:
            row = self._row(session, org_id, file_id)
        return FileContent(filename=row.filename, size=row.bytes, chunks=self._store.iter_chunks(row.id))

    def remove_orphan_blobs(self, min_age_seconds: float = ORPHAN_BLOB_SECONDS) -> builtins.list[str]:
        """Delete blobs that no file row points to and that are older than `min_age_seconds`; return their keys.

        The durable-write order (blob renamed into place, then its row committed) leaves such a blob when the
        process dies between the two; the server sweeps them on start so a crash costs no disk for good.
        """
        candidates = list(self._store.keys_older_than(min_age_seconds))
        if not candidates:
            return []
        with self._sessions.begin() as session:
            known = repo.existing_file_ids(session, candidates)
        orphans = [key for key in candidates if key not in known]
        for key in orphans:
            self._store.delete(key)
        return orphans

    def delete(self, org_id: str | None, file_id: str) -> DeletedObject:
        """Remove the row first (the file disappears for everyone at once), then the bytes.

        Jobs keep their own copy of their training data, so deleting a file a job used is allowed
        (as on Azure) and does not break that job's resume.
        """
        with self._sessions.begin() as session:
            self._row(session, org_id, file_id)
            repo.delete_file(session, file_id)
        self._store.delete(file_id)
        return DeletedObject(id=file_id, object="file")

    # for the worker (jobs/ports.py JobFiles): a job's copy of its data, its result file, expiry ---------------
    def snapshot(self, org_id: str, file_id: str, dest: Path) -> bool:
        """Copy the organization's file `file_id` to `dest` (a job keeps its own copy: deleting the file later
        cannot hurt the job); False when there is no such file any more."""
        with self._reads.begin() as session:
            if repo.get_file(session, org_id, file_id) is None:
                return False
        self._store.snapshot_to(file_id, dest)
        return True

    def put_result_file(self, path: Path) -> StoredBlob:
        """Store a finished job's result CSV durably under a new file id; its row comes with the job's success
        (`add_result_row`, in the same transaction), or `discard` removes the blob again."""
        return self._store.put_file(ids.file_id(), path)

    def mirror_job_folder(self, job_id: str, folder: Path, include: Callable[[PurePosixPath], bool]) -> None:
        """With an object store: upload a succeeded job's artefacts (the files of `folder` that `include`
        accepts) under `jobs/<job_id>/`, manifest last (storage/folders.py), so they outlive the job folder.
        On the data folder the job folder is their home: nothing to do."""
        if self._job_folders is not None:
            self._job_folders.push(job_id, folder, include=include)

    # a running job's checkpoints (services/checkpoint_mirror.py); nothing to do on the data folder
    def mirror_checkpoint(self, job_id: str, job_folder: Path, step: int) -> None:
        if self._checkpoints is not None:
            self._checkpoints.push(job_id, job_folder, step)

    def forget_checkpoint(self, job_id: str, step: int) -> None:
        if self._checkpoints is not None:
            self._checkpoints.forget(job_id, step)

    def forget_job_checkpoints(self, job_id: str) -> None:
        if self._checkpoints is not None:
            self._checkpoints.forget_job(job_id)

    def restore_checkpoint(self, job_id: str, job_folder: Path) -> int | None:
        return self._checkpoints.restore(job_id, job_folder) if self._checkpoints is not None else None

    @staticmethod
    def add_result_row(session: Session, blob: StoredBlob, *, org_id: str, project: str | None) -> str:
        """The file row of a stored result (`results.csv`, purpose `fine-tune-results`), in the caller's
        transaction; result files count against no quota (their job was admitted already)."""
        session.add(
            FileRow(
                id=blob.key,
                organization_id=org_id,
                project=project,
                filename="results.csv",
                purpose=RESULT_PURPOSE,
                bytes=blob.size,
                sha256=blob.sha256,
                created_at=int(time.time()),
                status="processed",
            )
        )
        return blob.key

    def discard(self, file_id: str) -> None:
        """Remove a stored blob whose row was never committed."""
        self._store.delete(file_id)

    def delete_expired(self) -> builtins.list[str]:
        """Delete the files whose `expires_at` has passed (rows first, then bytes); return their ids."""
        with self._sessions.begin() as session:
            expired = [row.id for row in repo.expired_files(session, int(time.time()))]
            for file_id in expired:
                repo.delete_file(session, file_id)
        for file_id in expired:
            self._store.delete(file_id)
        return expired
