"""Blob store on the local filesystem: blobs at `root/<key>`, uncommitted writes in `root/.tmp/`.

Temp files live under the root (same filesystem) so that committing is a single atomic `os.replace`.
Committed blobs are never modified in place: replacing a key renames a new file over it, so the old
inode (and any hard link to it) keeps its content.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from openft.fsutil import atomic_open, ensure_dir, fsync_dir, temp_sibling
from openft.storage.base import BlobTooLarge, StoredBlob, validate_key

STALE_TEMP_SECONDS = 3600
"""A temp file whose writer this process cannot judge (another host's, container's or boot's, on shared
storage) is taken as left by a crashed process once it has not been written to for this long (its
modification time; an upload in progress writes to it all the time)."""

_COPY_CHUNK = 1 << 20


def process_space() -> str:
    """Who can judge this process's pids: the host name, plus a hash that tells apart machines whose names
    look alike once made file-name safe, other boots of the same machine, and containers that share a host
    name but not a pid namespace (each of those may run an unrelated process under the same pid)."""
    hostname = socket.gethostname()
    identity = [hostname]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            identity.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            identity.append("")
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', hostname)[:40] or 'host'}-{digest}"


_HOST = process_space()
"""The first part of this process's temp file names (no dots, so the name still splits into four parts)."""
_OWN_TEMPS: set[str] = set()
"""File names (random, so unique) of the temp files this process is writing. A file named with this process's
pid but not in here was left by an earlier process that had the same pid (a restarted container's server is
often pid 1)."""
_OWN_TEMPS_LOCK = threading.Lock()


def _temp_writer(name: str) -> tuple[str, int] | None:
    """(host, pid) of the process that writes the temp file `name` (`HOST.PID.RANDOM.part`), if it says."""
    parts = name.split(".")
    if len(parts) == 4 and parts[3] == "part" and parts[1].isdigit():
        return parts[0], int(parts[1])
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


class LocalBlobWriter:
    """Streams bytes into a temp file, hashing as it goes, until `commit` or `abort`."""

    def __init__(self, root: Path, tmp_dir: Path, max_bytes: int | None):
        with _OWN_TEMPS_LOCK:  # created and registered at once, so a concurrent cleanup never sees it unowned
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{_HOST}.{os.getpid()}.", suffix=".part")
            _OWN_TEMPS.add(os.path.basename(name))
        self._root = root
        self._tmp = Path(name)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._max_bytes = max_bytes
        self._sha256 = hashlib.sha256()
        self._committed = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("blob writer is already committed or aborted")
        if self._max_bytes is not None and self.size + len(data) > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._file.write(data)
        self._sha256.update(data)
        self.size += len(data)

    def commit(self, key: str) -> StoredBlob:
        final = self._root / validate_key(key)
        if self._file is None:
            raise ValueError("blob writer is already committed or aborted")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.replace(self._tmp, final)
            fsync_dir(self._root)
        except BaseException:
            self.abort()
            raise
        self._committed = True
        _OWN_TEMPS.discard(self._tmp.name)
        return StoredBlob(key=key, size=self.size, sha256=self._sha256.hexdigest())

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._committed:
            self._tmp.unlink(missing_ok=True)
            _OWN_TEMPS.discard(self._tmp.name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class LocalBlobStore:
    """A `BlobStore` rooted at a folder, shared safely by the server and worker processes."""

    def __init__(self, root: Path):
        self.root = root
        self._tmp_dir = root / ".tmp"
        ensure_dir(self._tmp_dir)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        """Delete the temp files of writers that are gone, so a server killed mid-upload leaves nothing behind
        once it is started again.

        A temp file's name says which process writes it (`HOST.PID.RANDOM.part`, HOST from `process_space`).
        Written from this host and pid namespace it is stale when that process is dead, or when the pid is
        this process's own but the file is not one this process opened (pid reuse). Worker processes and
        other servers sharing the folder keep theirs. A file from another host (or container, or boot), or
        without a writer in its name, is stale only once untouched for STALE_TEMP_SECONDS: a pid says
        nothing about a process elsewhere, so it is never checked against this host's processes.
        """
        entries = list(self._tmp_dir.iterdir())
        with _OWN_TEMPS_LOCK:
            own = set(_OWN_TEMPS)
        cutoff = time.time() - STALE_TEMP_SECONDS
        for entry in entries:
            writer = _temp_writer(entry.name)
            try:
                if writer is not None and writer[0] == _HOST:
                    pid = writer[1]
                    stale = entry.name not in own if pid == os.getpid() else not _pid_alive(pid)
                else:
                    stale = entry.stat().st_mtime < cutoff
                if stale:
                    entry.unlink()
            except FileNotFoundError:
                continue  # its writer committed or aborted it meanwhile

    def writer(self, max_bytes: int | None = None) -> LocalBlobWriter:
        return LocalBlobWriter(self.root, self._tmp_dir, max_bytes)

    def put_file(self, key: str, source: Path) -> StoredBlob:
        validate_key(key)
        with self.writer() as writer, open(source, "rb") as handle:
            while chunk := handle.read(_COPY_CHUNK):
                writer.write(chunk)
            return writer.commit(key)

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # Opened now, not on first iteration: a missing blob raises FileNotFoundError before a response
        # starts streaming, and a blob deleted mid-download still streams to the end (POSIX semantics).
        handle = open(self.local_path(key), "rb")  # noqa: SIM115 (closed by the generator)
        return _read_chunks(handle, chunk_size)

    def size(self, key: str) -> int:
        return self.local_path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()

    def delete(self, key: str) -> None:
        self.local_path(key).unlink(missing_ok=True)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        cutoff = time.time() - seconds
        for entry in self.root.iterdir():
            try:
                key = validate_key(entry.name)  # skips `.tmp` and anything that is not a blob's name
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    yield key
            except (ValueError, FileNotFoundError):
                continue

    def local_path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def snapshot_to(self, key: str, dest: Path) -> None:
        """Hard-link (or else copy) the blob to `dest`; treat `dest` as read-only, as it may share the inode."""
        source = self.local_path(key)
        ensure_dir(dest.parent)
        tmp = temp_sibling(dest)
        try:
            os.link(source, tmp)
        except OSError:  # another filesystem, one without hard links, or a missing blob (raises again below)
            with open(source, "rb") as src, atomic_open(dest) as out:
                shutil.copyfileobj(src, out, _COPY_CHUNK)
            return
        try:
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(dest.parent)


def _read_chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(chunk_size):
            yield chunk
