"""The disk fills up while a job checkpoints: the job is paused (not failed) with an error event that says so,
keeps its checkpoints, and finishes once resumed with space again. A real full disk: the jobs folder is a
small tmpfs, filled while the trainer is held (SIGSTOP, the trainer's fault injection) after its step-3
checkpoint."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from openft.trainer_contract import LOCK_FILE
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer, start_server
from tests.support.tmpfs import fill, mounted_tmpfs
from tests.support.waiting import all_events, wait_for, wait_for_status

FREE_WHEN_FULL = 64 << 10
"""Room for metrics lines, not for a checkpoint of the tiny model (~170 KB)."""


@pytest.fixture
def jobs_on_small_disk(tmp_path: Path, models_dir: Path) -> Iterator[tuple[RunningServer, Path]]:
    data_dir = tmp_path / "data"
    with mounted_tmpfs(data_dir / "jobs", "8m") as jobs:
        # Every trainer holds itself (SIGSTOP) once it stands at step 4, after the step-3 checkpoint.
        server = start_server(data_dir, models_dir, extra_env={"OPENFT_TRAIN_DEBUG_SIGNALS": "4:SIGSTOP"})
        try:
            yield server, jobs
        finally:
            server.stop()


def _held_trainer(job_dir: Path) -> int:
    """The pid of the job's trainer once it has stopped itself (its folder lock names it)."""

    def held() -> int | None:
        try:
            pid = int((job_dir / LOCK_FILE).read_text().split()[1])
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, ValueError, IndexError):
            return None
        return pid if state == "T" else None

    return wait_for(held, timeout=120, what="the trainer to hold at step 4")


def test_a_full_disk_pauses_the_job_and_resume_finishes_it(
    jobs_on_small_disk: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    server, jobs = jobs_on_small_disk
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    job_dir = jobs / job.id

    trainer = _held_trainer(job_dir)
    assert (job_dir / "checkpoints" / "step_000003").is_dir()
    filler = fill(jobs, FREE_WHEN_FULL)
    os.kill(trainer, signal.SIGCONT)  # steps 4-6, then the epoch-end checkpoint of step 6 finds no space

    paused = wait_for_status(client, job.id, {"paused", "failed", "succeeded"}, timeout=120)
    assert paused.status == "paused" and paused.error is None
    events = all_events(client, job.id)
    errors = [e.message for e in events if e.level == "error"]
    assert errors == ["paused: the disk is full while writing checkpoint at step 6; free space and resume"]
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id)] == [3]
    assert not list((job_dir / "checkpoints").glob(".tmp-*"))

    filler.unlink()
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    os.kill(_held_trainer(job_dir), signal.SIGCONT)  # the resumed run stands at step 4 again
    done = wait_for_status(client, job.id, {"succeeded", "failed", "paused"}, timeout=120)
    assert done.status == "succeeded", done.error
