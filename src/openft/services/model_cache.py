"""The disk bound of fine-tuned models restored from the object store for serving (`OPENFT_MODEL_CACHE_GB`).

With an object store, a succeeded job's folder is a cache of its stored artefacts: serving restores it when it is
missing (services/models.py). Each folder restored that way carries a marker file, `.served`, whose modification
time is its last use; past the bound, the least recently used marked folders are deleted (serving restores them
again when asked). Only marked folders are ever deleted here: a job still running, paused or not yet stored is
never marked. A folder used in the last `GRACE_SECONDS` is kept whatever the bound, so a model being loaded from
it is not pulled from under the loader.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from openft.fsutil import remove_tree

log = logging.getLogger(__name__)
MARKER = ".served"
GRACE_SECONDS = 120.0


def mark_used(job_folder: Path, *, create: bool = False) -> None:
    """Note a use of a restored folder (`create`: it was just restored, and is a cache entry from now on)."""
    marker = job_folder / MARKER
    if create:
        marker.touch()
    else:
        with contextlib.suppress(FileNotFoundError):
            os.utime(marker)


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file():
                total += path.stat().st_size
    return total


def evict(jobs_dir: Path, limit_bytes: int, *, now: float | None = None) -> list[str]:
    """Delete the least recently used marked folders until the marked ones hold at most `limit_bytes`; their
    names. Folders used within GRACE_SECONDS stay (the bound may then be exceeded for that long)."""
    now = time.time() if now is None else now
    entries = []
    for folder in jobs_dir.iterdir() if jobs_dir.is_dir() else ():
        try:
            used = (folder / MARKER).stat().st_mtime
        except OSError:
            continue
        entries.append((used, folder, folder_bytes(folder)))
    total = sum(size for _, _, size in entries)
    evicted = []
    for used, folder, size in sorted(entries, key=lambda entry: entry[0]):
        if total <= limit_bytes:
            break
        if now - used < GRACE_SECONDS:
            continue
        remove_tree(folder)
        total -= size
        evicted.append(folder.name)
    if evicted:
        log.info("removed %d restored model folder(s) past the cache bound: %s", len(evicted), ", ".join(evicted))
    return evicted
