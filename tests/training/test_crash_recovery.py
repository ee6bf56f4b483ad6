"""What crash recovery needs from the trainer: periodic checkpoints that change nothing and are exact resume
points, and one trainer at a time in a job folder (training/folder_lock.py)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import LOCK_FILE, ExitCode, parse_progress_line
from openft.training import checkpoint as ckpt
from tests.training.conftest import (
    assert_same_tensors,
    job_spec,
    results_rows,
    run_in_process,
    run_subprocess,
    write_job,
)

NO_VALIDATION = {"validation_file": None}  # 6 steps, epoch ends at 3 and 6


@pytest.fixture
def make_job(tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]) -> Any:
    def make(name: str, **overrides: Any) -> Path:
        spec = job_spec(tmp_path, tiny_model_dir, data_files, name=name, **{**NO_VALIDATION, **overrides})
        return write_job(tmp_path / f"{name}-{time.monotonic_ns()}.json", spec)

    return make


def test_periodic_checkpoints_change_nothing_and_are_pruned_like_the_others(make_job: Any, tmp_path: Path) -> None:
    straight = run_in_process(make_job("straight"))
    periodic = run_in_process(make_job("periodic", checkpoint_every_steps=2, keep_checkpoints=2))
    timed = run_in_process(make_job("timed", checkpoint_every_minutes=1e-9))  # due after every step
    assert straight.rc == periodic.rc == timed.rc == ExitCode.COMPLETED
    assert [(m["step"], m["kind"]) for m in periodic.of("checkpoint")] == [
        (2, "periodic"),
        (3, "epoch"),
        (4, "periodic"),
        (6, "epoch"),
    ]
    assert [m["step"] for m in periodic.of("checkpoint_removed")] == [2, 4]  # superseded at once
    assert [(m["step"], m["kind"]) for m in timed.of("checkpoint")] == [
        (1, "periodic"),
        (2, "periodic"),
        (3, "epoch"),
        (4, "periodic"),
        (5, "periodic"),
        (6, "epoch"),
    ]
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "timed")] == [3, 6]
    for name in ("periodic", "timed"):
        assert results_rows(tmp_path / name) == results_rows(tmp_path / "straight")
        assert_same_tensors(tmp_path / "straight" / "model", tmp_path / name / "model")


def test_a_run_killed_after_a_periodic_checkpoint_resumes_from_it_exactly(make_job: Any, tmp_path: Path) -> None:
    straight = run_in_process(make_job("straight"))
    killed = run_subprocess(make_job("killed", checkpoint_every_steps=2), debug_signals="5:SIGKILL")
    assert killed.rc == -signal.SIGKILL and killed.of("checkpoint")[-1]["kind"] == "periodic"
    resumed = run_subprocess(make_job("killed", checkpoint_every_steps=2))
    assert resumed.rc == ExitCode.COMPLETED, resumed.stderr[-2000:]
    started = resumed.of("started")[0]
    assert started["start_step"] == 4 and started["steps_per_epoch"] == 3
    assert [(c["step"], c["kind"]) for c in started["checkpoints"]] == [(3, "epoch"), (4, "periodic")]
    assert results_rows(tmp_path / "killed") == results_rows(tmp_path / "straight")
    assert_same_tensors(tmp_path / "straight" / "model", tmp_path / "killed" / "model")
    assert straight.rc == ExitCode.COMPLETED


def _hold_lock(output_dir: Path) -> int:
    """Take the trainer's folder lock in this process, as a trainer still running would hold it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(output_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    os.write(fd, b"pid 1234 on old-worker\n")
    return fd


def _start_trainer(job_file: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFT_TRAIN_DEBUG_SIGNALS": ""}
    command = [sys.executable, "-m", "openft.training.entrypoint", str(job_file)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _messages(stdout: str) -> list[dict[str, Any]]:
    return [m for m in map(parse_progress_line, stdout.splitlines()) if m is not None]


def test_a_trainer_waits_for_the_previous_one_to_leave_the_folder(make_job: Any, tmp_path: Path) -> None:
    job = make_job("locked")
    fd = _hold_lock(tmp_path / "locked")
    trainer = _start_trainer(job)
    try:
        time.sleep(3)  # long enough to import torch and reach the lock
        assert trainer.poll() is None
        assert not (tmp_path / "locked" / "metrics.jsonl").exists(), "the folder was used while locked"
    finally:
        os.close(fd)  # the old trainer exits
    stdout, stderr = trainer.communicate(timeout=120)
    assert trainer.returncode == ExitCode.COMPLETED, stderr[-2000:]
    waiting = [m["message"] for m in _messages(stdout) if m["type"] == "log" and "Waiting" in m["message"]]
    assert waiting and "1234" not in waiting[0] and "old-worker" not in waiting[0]  # the job's owner reads events
    assert "job folder locked by pid 1234 on old-worker" in stderr  # the operator's train.log names the holder
    assert (tmp_path / "locked" / "results.csv").is_file()


def test_a_trainer_waiting_for_the_folder_can_still_be_stopped(make_job: Any, tmp_path: Path) -> None:
    job = make_job("stopped")
    fd = _hold_lock(tmp_path / "stopped")
    try:
        trainer = _start_trainer(job)
        assert trainer.stdout is not None
        for line in trainer.stdout:  # its handlers are in once it has said so
            if (parse_progress_line(line) or {}).get("type") == "log":
                break
        trainer.send_signal(signal.SIGUSR1)
        stdout, _stderr = trainer.communicate(timeout=30)
    finally:
        os.close(fd)
    assert trainer.returncode == ExitCode.STOPPED
    assert _messages(stdout)[-1] == {"type": "stopped", "step": 0, "checkpoint": None}
