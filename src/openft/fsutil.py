"""Durable file writes: temp name → write → fsync → rename → fsync the folder.

A reader (another process, or this one after a power cut) either sees the old file or the complete
new one, never a torn write. Used for uploads, checkpoints, result files and model folders.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename is durable only once its parent folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_dir(path: Path) -> None:
    """`mkdir -p` whose result survives a power cut: the parent of every folder it creates is fsynced.

    A new folder is an entry in its parent; until the parent is synced, a crash can lose the folder and
    everything later renamed into it, even files that were themselves fsynced.
    """
    missing = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            if not folder.is_dir():
                raise
        fsync_dir(folder.parent)  # also when another process made it just now: it may not have synced yet


def temp_sibling(path: Path) -> Path:
    """A hidden name in the same folder (same filesystem, so the final rename is atomic)."""
    return path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Open a temp file for writing; on success it is fsynced and renamed to `path`.

    `mode` is the permission the file is created with (less the umask): a secret is written with 0o600
    from the first byte, never created readable and chmod-ed after (someone could open it in between).
    """
    ensure_dir(path.parent)
    tmp = temp_sibling(path)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o666) -> None:
    with atomic_open(path, mode) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, mode: int = 0o666) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder below `root` (before renaming a freshly written folder into place)."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def commit_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Make a fully written temp folder visible as `final_dir` (replacing an older one if present)."""
    fsync_tree(tmp_dir)
    if final_dir.exists():
        trash = temp_sibling(final_dir)
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def remove_tree(path: Path) -> None:
    """Delete a folder so that it disappears at once: rename it away first, then remove it."""
    if not path.exists():
        return
    trash = temp_sibling(path)
    os.replace(path, trash)
    fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)
