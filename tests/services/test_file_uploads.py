"""Uploads are durable in the order README promises: temp file → fsync → rename → fsync folder → DB row.

A crash at any point leaves either nothing listed (no row) or a complete blob with its row; never a row
pointing at a missing or torn blob.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from openft.db.tables import FileRow
from openft.services.container import Container, build_container
from openft.storage import BlobWriter, LocalBlobStore


def _path_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


@pytest.fixture
def trace(monkeypatch: pytest.MonkeyPatch, container: Container) -> Iterator[list[tuple[str, Any]]]:
    """Every fsync, rename and file-row insert, in order."""
    events: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", _path_of(fd)))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", (str(src), str(dst))))
        real_replace(src, dst)

    def before_insert(_mapper: Any, _connection: Any, row: FileRow) -> None:
        store = container.store
        assert isinstance(store, LocalBlobStore)
        temp_left = list((store.root / ".tmp").iterdir())
        events.append(("insert", {"blob_there": store.exists(row.id), "temp_left": temp_left}))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    event.listen(FileRow, "before_insert", before_insert)
    try:
        yield events
    finally:
        event.remove(FileRow, "before_insert", before_insert)


def test_blob_is_synced_and_renamed_before_its_row_is_written(
    container: Container, trace: list[tuple[str, Any]]
) -> None:
    writer = container.store.writer()
    writer.write(b'{"a": 1}\n')
    created = container.files.create(container.default_org_id, purpose="fine-tune", filename="a.jsonl", writer=writer)

    root = Path(container.settings.files_dir).resolve()
    final = str(root / created.id)
    kinds = [kind for kind, _ in trace]
    rename = next(i for i, (kind, value) in enumerate(trace) if kind == "rename" and value[1] == final)
    temp = Path(trace[rename][1][0])
    assert temp.parent == root / ".tmp"
    fsync_file = trace.index(("fsync", str(temp)))
    fsync_folder = trace.index(("fsync", str(root)), rename)
    insert = kinds.index("insert")
    assert fsync_file < rename < fsync_folder < insert, trace
    assert trace[insert][1] == {"blob_there": True, "temp_left": []}


def test_failed_row_write_removes_the_blob(container: Container, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the database refuses the row, the committed blob is deleted again: no orphan bytes."""

    def refuse(*_args: Any) -> None:
        raise RuntimeError("database is gone")

    event.listen(FileRow, "before_insert", refuse)
    try:
        writer = container.store.writer()
        writer.write(b"x")
        with pytest.raises(RuntimeError):
            container.files.create(container.default_org_id, purpose="fine-tune", filename="a.jsonl", writer=writer)
    finally:
        event.remove(FileRow, "before_insert", refuse)
    root = Path(container.settings.files_dir)
    assert [p for p in root.rglob("*") if p.is_file()] == []


def _writer(store: LocalBlobStore, data: bytes) -> BlobWriter:
    writer = store.writer()
    writer.write(data)
    return writer


def test_a_start_sweeps_old_blobs_without_a_row_and_keeps_everything_else(container: Container) -> None:
    """A process killed between the blob's rename and its row's commit leaves a blob nothing points to."""
    store = container.store
    kept = container.files.create("org-x", purpose="fine-tune", filename="t.jsonl", writer=_writer(store, b"{}\n")).id
    for key in ("file-orphan", "file-fresh-orphan"):
        writer = store.writer()
        writer.write(b"left behind")
        writer.commit(key)
    hour_ago = time.time() - 2 * 3600
    for key in ("file-orphan", kept):
        os.utime(store.local_path(key), (hour_ago, hour_ago))

    opened = build_container(container.settings, with_worker=False)  # what `openft export` runs: no sweep
    opened.close()
    assert store.exists("file-orphan")

    rebuilt = build_container(container.settings, with_worker=False)
    rebuilt.start()  # what a server start runs
    rebuilt.close()

    assert not store.exists("file-orphan")  # old and without a row: gone
    assert store.exists("file-fresh-orphan")  # may be an upload whose row is being written right now
    assert store.exists(kept) and container.files.get(None, kept).bytes == 3
