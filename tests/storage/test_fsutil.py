"""Durable folders: a new folder is an entry of its parent, lost in a power cut until the parent is fsynced.

The calls to `fsync_dir` are recorded (and still made): a power cut cannot be staged in a test, but which
folders get synced after which mkdir or rename can be checked exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from openft import fsutil
from openft.storage import LocalBlobStore


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = fsutil.fsync_dir

    def record(path: Path) -> None:
        calls.append(Path(path))
        real(path)

    monkeypatch.setattr(fsutil, "fsync_dir", record)
    return calls


def test_ensure_dir_syncs_the_parent_of_every_folder_it_makes(tmp_path: Path, synced: list[Path]) -> None:
    fsutil.ensure_dir(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert synced == [tmp_path, tmp_path / "a", tmp_path / "a" / "b"]
    synced.clear()
    fsutil.ensure_dir(tmp_path / "a" / "b")  # nothing new: nothing to sync
    assert synced == []


def test_an_atomic_write_into_new_folders_makes_them_durable(tmp_path: Path, synced: list[Path]) -> None:
    fsutil.atomic_write_text(tmp_path / "new" / "deeper" / "f.txt", "x")
    assert synced[:2] == [tmp_path, tmp_path / "new"]  # the folders, before the file is renamed into them
    assert synced[-1] == tmp_path / "new" / "deeper"  # the rename


def test_a_new_blob_store_and_a_folder_renamed_into_place_are_durable(tmp_path: Path, synced: list[Path]) -> None:
    LocalBlobStore(tmp_path / "data" / "files")
    assert {tmp_path, tmp_path / "data", tmp_path / "data" / "files"} <= set(synced)
    synced.clear()
    staged = tmp_path / ".tmp-model"
    (staged / "sub").mkdir(parents=True)
    (staged / "sub" / "w.bin").write_bytes(b"w")
    fsutil.commit_dir(staged, tmp_path / "model")
    assert synced[-1] == tmp_path  # the parent, after the rename
