"""The disk bound of model folders restored from the object store: least recently used first, only marked
folders, never one in use within the grace period."""

from __future__ import annotations

import os
from pathlib import Path

from openft.services import model_cache


def _folder(jobs: Path, name: str, size: int, used: float | None) -> Path:
    folder = jobs / name
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "weights.bin").write_bytes(b"x" * size)
    if used is not None:
        model_cache.mark_used(folder, create=True)
        os.utime(folder / model_cache.MARKER, (used, used))
    return folder


def test_the_least_recently_used_restored_folders_go_first(tmp_path: Path) -> None:
    now = 10_000.0
    old = _folder(tmp_path, "ftjob-old", 1000, used=now - 3000)
    middle = _folder(tmp_path, "ftjob-middle", 1000, used=now - 2000)
    recent = _folder(tmp_path, "ftjob-recent", 1000, used=now - 1000)
    running = _folder(tmp_path, "ftjob-running", 5000, used=None)  # never restored: not the cache's
    assert model_cache.evict(tmp_path, 2100, now=now) == ["ftjob-old"]
    assert not old.exists() and middle.exists() and recent.exists() and running.exists()
    assert model_cache.evict(tmp_path, 0, now=now) == ["ftjob-middle", "ftjob-recent"]
    assert running.exists()


def test_a_folder_in_use_stays_past_the_bound(tmp_path: Path) -> None:
    now = 10_000.0
    busy = _folder(tmp_path, "ftjob-busy", 1000, used=now - 5)
    assert model_cache.evict(tmp_path, 0, now=now) == []
    assert busy.exists()


def test_a_use_moves_a_folder_to_the_back(tmp_path: Path) -> None:
    now = 10_000.0
    first = _folder(tmp_path, "ftjob-a", 1000, used=now - 3000)
    _folder(tmp_path, "ftjob-b", 1000, used=now - 2000)
    model_cache.mark_used(first)  # used now (its marker's time is the real clock, past `now`)
    assert model_cache.evict(tmp_path, 1000, now=now + 1000) == ["ftjob-b"]
    assert first.exists()
