"""job.json: the thread count (a worker's jobs share its CPUs instead of each taking them all), and where a
reinforcement job's trainer loads its judge models from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from openft.basemodels import BaseModelInfo
from openft.db.tables import JobRow
from openft.jobs.job_file import judge_folders, judge_specs, train_threads
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


def test_judges_load_from_the_catalog_or_the_jobs_own_copy(tmp_path: Path) -> None:
    """A base judge comes from the catalog as the job's base would; a fine-tuned one from `judges/N` (its copy
    made at validation), numbered by sorted name; a judge whose base left the catalog is a LookupError."""
    base = BaseModelInfo(name="tiny", source="local", path=tmp_path / "models" / "tiny")
    job = JobRow(
        judge_models={
            "tiny": {"base": "tiny", "weights": None},
            "ft:tiny:acme::abc": {"base": "tiny", "weights": "/data/jobs/ftjob-a/model"},
        }
    )
    job_dir = tmp_path / "jobs" / "ftjob-b"
    assert judge_folders(job, job_dir) == {"ft:tiny:acme::abc": job_dir / "judges" / "0"}
    specs = judge_specs(job, job_dir, {"tiny": base}.get)
    assert specs["tiny"].model_dump() == {"name": "tiny", "source": "local", "path": str(base.path), "hub_id": None}
    assert specs["ft:tiny:acme::abc"].model_dump() == {
        "name": "ft:tiny:acme::abc",
        "source": "finetune",
        "path": str(job_dir / "judges" / "0"),
        "hub_id": None,
    }
    assert judge_specs(JobRow(judge_models=None), job_dir, {}.get) == {}
    with pytest.raises(LookupError, match="'tiny'"):
        judge_specs(job, job_dir, {}.get)
