"""The Uploads API: a file larger than one request may carry, sent in parts and assembled into a File.

An upload declares its size, name and purpose; parts (up to 64 MiB each) are streamed to the blob store as
they arrive, each a blob keyed by its part id; completion streams the named parts, in the order given, into
one new blob (so memory stays bounded whatever the size), checks the size and the optional md5, and hands the
blob to `FileService.create`, which makes the File exactly as `POST /files` does (purpose, expiry, the
organization's storage quota; durable before its row). Until then nothing of the upload is visible as a file.

An upload expires an hour after it was created unless completed: it is shown as expired from that moment, and
a sweep (`start`, run by every server) records that and deletes its parts. A cancel deletes them at once.
Part blobs are never older than their upload, so the server's orphan-blob sweep (files older than an hour that
no File row names, services/files.py) only ever removes parts of expired uploads, which are garbage anyway.

Read methods take `org_id: str | None` like the files service: None is an admin key, which sees every
organization's uploads; another organization's upload is the same 404 as one nobody created.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from sqlalchemy.orm import Session, sessionmaker

from openft import ids
from openft.db import uploads as db
from openft.db.engine import read_only_sessions
from openft.db.tables import UploadPartRow, UploadRow
from openft.errors import InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from openft.protocol.files import UPLOAD_PURPOSES, FileObject
from openft.protocol.uploads import Upload, UploadComplete, UploadCreate, UploadPart, UploadStatus
from openft.services import quotas
from openft.services.files import FileService, clean_filename
from openft.storage import BlobStore, BlobTooLarge, BlobWriter

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PART_BYTES = 64 * MiB
"""OpenAI's limit for one part; the SDK's `upload_file_chunked` sends parts of exactly this size by default."""
UPLOAD_LIFETIME_SECONDS = 3600
"""An upload not completed within an hour of its creation expires (OpenAI's rule)."""
SWEEP_SECONDS = 60.0
"""How often a server looks for expired uploads whose parts are still stored."""
_ASSEMBLY_CHUNK = MiB
_MD5 = re.compile(r"[0-9a-f]{32}")


def new_upload_id() -> str:
    """`upload_…`, as OpenAI spells its upload ids (an underscore, unlike `file-…`)."""
    return f"upload_{ids.random_token(24)}"


def new_part_id() -> str:
    """`part_…`; also the key of the part's blob (a valid blob key, never a file's `file-…`)."""
    return f"part_{ids.random_token(24)}"


@dataclass(frozen=True)
class PartSlot:
    """How many bytes the next part of an upload may have, decided before its body is read."""

    max_bytes: int
    by_part_limit: bool
    """True when `max_bytes` is the per-part limit, False when the upload's remaining room is smaller."""

    def too_large(self) -> PayloadTooLarge:
        if self.by_part_limit:
            message = f"A part may be at most {self.max_bytes // MiB} MB ({self.max_bytes} bytes); send smaller parts."
        else:
            message = (
                f"This part would take the upload's parts past its declared size (only {self.max_bytes} more bytes "
                "fit); complete the upload with the parts it has, or cancel it and create a new one."
            )
        return PayloadTooLarge(message, param="data")


class UploadService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: BlobStore,
        files: FileService,
        *,
        max_total_bytes: int,
        max_part_bytes: int = MAX_PART_BYTES,
        clock: Callable[[], float] = time.time,
        sweep_seconds: float = SWEEP_SECONDS,
    ):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)
        self._store = store
        self._files = files
        self.max_total_bytes = max_total_bytes
        self.max_part_bytes = max_part_bytes
        self._clock = clock
        self._sweep_seconds = sweep_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> int:
        return int(self._clock())

    # the API ----------------------------------------------------------------------------------------
    def create(self, org_id: str, request: UploadCreate, *, project: str | None = None) -> Upload:
        """Record a pending upload. Its size is checked against the server's limit and the organization's
        storage quota now, so a client learns before sending gigabytes that they could not be kept."""
        if request.purpose not in UPLOAD_PURPOSES:
            raise InvalidRequest(
                f"Invalid purpose {request.purpose!r}; expected one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose"
            )
        if request.bytes <= 0:
            raise InvalidRequest("'bytes' must be the file's size, a positive number of bytes.", param="bytes")
        if request.bytes > self.max_total_bytes:
            raise InvalidRequest(
                f"An upload may be at most {self.max_total_bytes} bytes ({self.max_total_bytes / 1024**3:g} GiB) on "
                f"this server; this one declares {request.bytes}. The limit is configurable with "
                "OPENFT_MAX_UPLOAD_TOTAL_BYTES.",
                param="bytes",
            )
        if not request.filename.strip():
            raise InvalidRequest("'filename' must not be empty.", param="filename")
        mime_type = request.mime_type.strip()
        if not mime_type or any(unicodedata.category(ch)[0] == "C" for ch in mime_type):
            raise InvalidRequest("'mime_type' must be a MIME type such as text/jsonl.", param="mime_type")
        now = self._now()
        row = UploadRow(
            id=new_upload_id(),
            organization_id=org_id,
            project=project,
            filename=clean_filename(request.filename),
            purpose=request.purpose,
            bytes=request.bytes,
            mime_type=mime_type,
            file_expires_after_seconds=request.expires_after.seconds if request.expires_after else None,
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME_SECONDS,
            status=db.PENDING,
        )
        with self._sessions.begin() as session:
            try:
                quotas.check_storage(session, org_id, request.bytes)
            except QuotaExceeded as exc:
                raise QuotaExceeded(exc.message, param="bytes") from None
            session.add(row)
        return self._wire(row, now)

    def part_slot(self, org_id: str | None, upload_id: str) -> PartSlot:
        """Refuse a part for an upload that cannot take one before its body is read (404, not pending, full);
        else how large it may be."""
        now = self._now()
        with self._reads.begin() as session:
            row = self._row(session, org_id, upload_id)
            _require_pending(row, now, "add a part to")
            stored = db.parts_bytes(session, upload_id)
        room = row.bytes + self.max_part_bytes - stored
        if room <= 0:
            raise self._full(row)
        return PartSlot(max_bytes=min(self.max_part_bytes, room), by_part_limit=self.max_part_bytes <= room)

    def add_part(self, org_id: str | None, upload_id: str, writer: BlobWriter | None) -> UploadPart:
        """Commit a part's streamed bytes as a blob, then record it, unless the upload stopped being pending
        meanwhile (then the blob is deleted again).

        An upload's parts may add up to its declared size plus one part: a client that retries a part whose
        answer it lost stores it twice, and must still be able to send its last part; only the parts named at
        completion count. More than that would let a client fill the disk through one upload.
        """
        try:
            if writer is None:
                raise InvalidRequest("The request has no 'data' part: send the part's bytes as 'data'.", param="data")
            if writer.size == 0:
                raise InvalidRequest("The part is empty.", param="data")
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        part_id = new_part_id()
        blob = writer.commit(part_id)  # durable before its row, like a file
        now = self._now()
        try:
            with self._sessions.begin() as session:
                row = self._row(session, org_id, upload_id, lock=True)
                _require_pending(row, now, "add a part to")
                if db.parts_bytes(session, upload_id) + blob.size > row.bytes + self.max_part_bytes:
                    raise self._full(row)
                try:  # a part takes disk now: it counts against the organization's storage quota at once
                    quotas.check_storage(session, row.organization_id, blob.size)
                except QuotaExceeded as exc:
                    raise QuotaExceeded(exc.message, param="data") from None
                session.add(UploadPartRow(id=part_id, upload_id=upload_id, created_at=now, bytes=blob.size))
        except BaseException:
            self._delete_blobs([part_id])
            raise
        return UploadPart(id=part_id, created_at=now, upload_id=upload_id)

    def complete(self, org_id: str | None, upload_id: str, request: UploadComplete) -> Upload:
        """Assemble the named parts, in order, into a File and mark the upload completed; its parts are then
        deleted (the unused ones too).

        The parts are streamed into one new blob (one chunk in memory at a time), hashed on the way for `md5`.
        Completion, cancel and expiry race only at the end: the upload is marked completed only if it is still
        pending, else the new File is deleted again and the request fails. A crash between making the File and
        marking the upload leaves the File (its id never told to anyone) and a pending upload that expires.
        """
        md5 = request.md5.lower() if request.md5 is not None else None
        if md5 is not None and not _MD5.fullmatch(md5):
            raise InvalidRequest("'md5' must be the file's MD5 checksum as 32 hexadecimal digits.", param="md5")
        part_ids = request.part_ids
        if not part_ids:
            raise InvalidRequest("'part_ids' must name at least one part.", param="part_ids")
        seen: set[str] = set()
        for part_id in part_ids:
            if part_id in seen:
                raise InvalidRequest(f"'part_ids' names the part {part_id} more than once.", param="part_ids")
            seen.add(part_id)
        now = self._now()
        with self._reads.begin() as session:
            row = self._row(session, org_id, upload_id)
            _require_pending(row, now, "complete")
            parts = db.parts_by_id(session, upload_id, part_ids)
        for part_id in part_ids:
            if part_id not in parts:
                raise InvalidRequest(f"No part {part_id} in upload {upload_id}.", param="part_ids")
        total = sum(parts[part_id].bytes for part_id in part_ids)
        if total != row.bytes:
            raise InvalidRequest(
                f"The parts named add up to {total} bytes, but the upload was created with bytes={row.bytes}.",
                param="part_ids",
            )
        created = self._assemble(row, part_ids, md5)
        with self._sessions.begin() as session:
            won = db.change_status(session, upload_id, "completed", file_id=created.id)
            leftover = db.delete_parts(session, upload_id) if won else []
            current = None if won else db.get_upload(session, None, upload_id)
        if not won:
            self._files.delete(None, created.id)
            status = _status(current, self._now()) if current is not None else "gone"
            raise InvalidRequest(
                f"Cannot complete upload {upload_id}: it became {status} while its parts were being assembled.",
                param="upload_id",
            )
        self._delete_blobs(leftover)
        row.status, row.file_id = "completed", created.id
        return self._wire(row, now, file=created)

    def cancel(self, org_id: str | None, upload_id: str) -> Upload:
        """Cancel a pending upload and delete its parts. Cancelling a cancelled upload again returns it (a client
        may retry a cancel whose answer it lost); a completed or expired one cannot be cancelled."""
        now = self._now()
        with self._sessions.begin() as session:
            row = self._row(session, org_id, upload_id, lock=True)
            status = _status(row, now)
            doomed: builtins.list[str] = []
            if status == db.PENDING and db.change_status(session, upload_id, "cancelled"):
                doomed = db.delete_parts(session, upload_id)
                row.status = status = "cancelled"
        self._delete_blobs(doomed)
        if status != "cancelled":
            raise InvalidRequest(f"Upload {upload_id} is {status} and cannot be cancelled.", param="upload_id")
        return self._wire(row, now)

    # expiry -----------------------------------------------------------------------------------------
    def expire_due(self) -> builtins.list[str]:
        """Record every pending upload past its time as expired and delete its parts; their ids."""
        expired: builtins.list[str] = []
        while True:
            with self._sessions.begin() as session:
                due = db.due_for_expiry(session, self._now())
                doomed: builtins.list[str] = []
                for upload_id in due:
                    if db.change_status(session, upload_id, "expired"):
                        expired.append(upload_id)
                        doomed += db.delete_parts(session, upload_id)
            self._delete_blobs(doomed)
            if len(due) < 500:
                return expired

    def start(self) -> None:
        """Sweep expired uploads now and then every `sweep_seconds`, on a daemon thread, until `stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._sweep_forever, name="openft-upload-expiry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _sweep_forever(self) -> None:
        while True:
            try:
                if swept := self.expire_due():
                    log.info("expired %d upload(s): %s", len(swept), ", ".join(swept))
            except Exception:
                log.exception("the upload expiry sweep failed; retrying in %g s", self._sweep_seconds)
            if self._stop.wait(self._sweep_seconds):
                return

    # helpers ----------------------------------------------------------------------------------------
    def _assemble(self, row: UploadRow, part_ids: builtins.list[str], md5: str | None) -> FileObject:
        """Stream the parts into one new blob and make it a File through the files service (which commits it
        durably, then writes its row under the organization's quota)."""
        digest = hashlib.md5(usedforsecurity=False)
        writer = self._store.writer(max_bytes=row.bytes)
        try:
            for part_id in part_ids:
                try:
                    chunks = self._store.iter_chunks(part_id, _ASSEMBLY_CHUNK)
                except FileNotFoundError:
                    raise InvalidRequest(
                        f"The part {part_id} is gone: the upload was cancelled or expired meanwhile.", param="part_ids"
                    ) from None
                for chunk in chunks:
                    writer.write(chunk)
                    digest.update(chunk)
            if writer.size != row.bytes:
                raise BlobTooLarge(row.bytes)  # a part's blob is not the size its row says: never assemble that
            if md5 is not None and digest.hexdigest() != md5:
                raise InvalidRequest(
                    f"The parts' MD5 checksum is {digest.hexdigest()}, not the {md5} given: a part was corrupted or "
                    "the parts are in the wrong order.",
                    param="md5",
                )
        except BlobTooLarge:
            writer.abort()
            raise InvalidRequest(
                f"The stored parts do not add up to the upload's {row.bytes} bytes.", param="part_ids"
            ) from None
        except BaseException:
            writer.abort()
            raise
        seconds = row.file_expires_after_seconds
        return self._files.create(
            row.organization_id,
            purpose=row.purpose,
            filename=row.filename,
            writer=writer,
            expires_after_anchor="created_at" if seconds is not None else None,
            expires_after_seconds=str(seconds) if seconds is not None else None,
            project=row.project,
            quota_excluding_upload=row.id,
        )

    @staticmethod
    def _row(session: Session, org_id: str | None, upload_id: str, *, lock: bool = False) -> UploadRow:
        row = db.get_upload(session, org_id, upload_id, lock=lock)
        if row is None:
            raise NotFound(f"No such Upload object: {upload_id}", param="upload_id")
        return row

    def _full(self, row: UploadRow) -> InvalidRequest:
        return InvalidRequest(
            f"The parts of upload {row.id} already fill its {row.bytes} bytes (with room for one retried part); "
            "complete it with the parts it has, or cancel it and create a new one.",
            param="data",
        )

    def _wire(self, row: UploadRow, now: int, *, file: FileObject | None = None) -> Upload:
        return Upload(
            id=row.id,
            bytes=row.bytes,
            created_at=row.created_at,
            filename=row.filename,
            purpose=row.purpose,
            status=_status(row, now),
            expires_at=row.expires_at,
            file=file,
        )

    def _delete_blobs(self, keys: builtins.list[str]) -> None:
        """Delete part blobs whose rows are gone. A failure is logged, not raised: the row change it follows is
        committed, and the orphan-blob sweep removes what is left once it is an hour old."""
        for key in keys:
            try:
                self._store.delete(key)
            except Exception:
                log.warning("could not delete the upload part %s; the orphan sweep will", key, exc_info=True)


def _status(row: UploadRow, now: int) -> UploadStatus:
    """The status a client sees: a pending upload past its time is expired, recorded yet or not."""
    if row.status == db.PENDING and now >= row.expires_at:
        return "expired"
    return cast(UploadStatus, row.status)  # the column holds only these four


def _require_pending(row: UploadRow, now: int, action: str) -> None:
    status = _status(row, now)
    if status != db.PENDING:
        raise InvalidRequest(
            f"Cannot {action} upload {row.id}: it is {status}"
            + (" (an upload expires an hour after it is created)." if status == "expired" else "."),
            param="upload_id",
        )
