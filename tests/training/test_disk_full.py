"""A disk that fills up while the trainer checkpoints: the run stops (the job is paused, not failed) at its last
good checkpoint, leaves no partial folder, and continues once there is space again. A real full disk: the
output folder is a small tmpfs, filled between the legs of the run."""

from __future__ import annotations

from pathlib import Path

import pytest

from openft.trainer_contract import ExitCode
from openft.training import checkpoint as ckpt
from openft.training.faults import DEBUG_SIGNALS_ENV
from openft.training.recipe import DISK_FULL_REASON
from tests.support.tmpfs import fill, mounted_tmpfs
from tests.training.conftest import job_spec, results_rows, run_in_process, write_job

FREE_WHEN_FULL = 64 << 10
"""Room for a few metrics lines, not for a checkpoint (the tiny model's LoRA checkpoints are ~170 KB)."""


def test_a_full_disk_while_checkpointing_stops_for_a_pause_and_resume_finishes(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        spec = job_spec(disk, tiny_model_dir, data_files, name="out", validation_file=None)
        job = write_job(tmp_path / "job.json", spec)
        out = Path(spec["output_dir"])

        # 1. Paused after step 3, with its epoch-end checkpoint: a good resume point.
        monkeypatch.setenv(DEBUG_SIGNALS_ENV, "3:SIGUSR1")  # fault injection: as if paused at step 3
        first = run_in_process(job)
        monkeypatch.delenv(DEBUG_SIGNALS_ENV)
        assert first.rc == ExitCode.STOPPED and first.last["step"] == 3

        # 2. The disk fills up; the resumed run trains steps 4-6 and cannot write the checkpoint of step 6.
        filler = fill(disk, FREE_WHEN_FULL)
        full = run_in_process(job)
        assert full.rc == ExitCode.STOPPED, full.messages[-3:]
        assert [m["step"] for m in full.of("metrics")][-1] == 6
        assert full.of("failed") == [] and full.of("checkpoint") == []
        stopped = full.last
        assert stopped["type"] == "stopped" and stopped["reason"] == DISK_FULL_REASON
        assert stopped["step"] == 3 and stopped["checkpoint"].endswith("step_000003")
        expected = "paused: the disk is full while writing checkpoint at step 6; free space and resume"
        assert stopped["message"] == expected
        assert str(disk) not in stopped["message"]
        assert [c.step for c in ckpt.list_checkpoints(out)] == [3]  # the previous checkpoint is kept, intact
        assert ckpt.verify(ckpt.list_checkpoints(out)[0]) is None
        assert not list((out / "checkpoints").glob(".tmp-*"))  # no partial folder left

        # 3. Space freed: the job continues from step 3 and completes.
        filler.unlink()
        done = run_in_process(job)
        assert done.rc == ExitCode.COMPLETED, done.messages[-3:]
        assert done.of("started")[0]["start_step"] == 3
        assert len(results_rows(out)) == 6
