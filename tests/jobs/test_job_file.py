"""job.json's thread count: a worker's jobs share its CPUs instead of each taking them all."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openft.jobs.job_file import train_threads
from openft.settings import Settings


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path, **values)


def test_one_job_at_a_time_leaves_the_count_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENFT_TRAIN_THREADS", raising=False)
    assert train_threads(_settings(tmp_path, max_jobs=1)) is None


def test_several_jobs_divide_the_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENFT_TRAIN_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train_threads(_settings(tmp_path, max_jobs=4)) == 4
    assert train_threads(_settings(tmp_path, max_jobs=3)) == 5
    assert train_threads(_settings(tmp_path, max_jobs=32)) == 1  # never none


def test_the_operators_setting_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert train_threads(_settings(tmp_path, max_jobs=4, train_threads=8)) == 8
    assert train_threads(_settings(tmp_path, max_jobs=1, train_threads=2)) == 2


def test_without_an_affinity_call_the_machines_cpus_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENFT_TRAIN_THREADS", raising=False)
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert train_threads(_settings(tmp_path, max_jobs=2)) == 4
