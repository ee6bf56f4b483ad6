"""The trainer's messages become job events and the job's `error`, read by the job's owner: no server path,
no pid. The full text goes to stderr (train.log) for the operator."""

from __future__ import annotations

import os
from pathlib import Path

from openft.trainer_contract import ExitCode
from tests.training.conftest import job_spec, run_in_process, write_job


def test_a_missing_base_model_folder_fails_without_naming_the_servers_paths(
    tmp_path: Path, data_files: dict[str, Path]
) -> None:
    gone = tmp_path / "srv" / "models" / "tiny"  # never made: the folder disappeared
    spec = job_spec(tmp_path, gone, data_files)
    run = run_in_process(write_job(tmp_path / "job.json", spec))
    assert run.rc == ExitCode.FAILED
    failed = run.last
    assert failed["type"] == "failed" and failed["code"] == "model_not_found" and failed["param"] == "model"
    assert "tiny" in failed["message"] and "missing" in failed["message"]
    for message in [failed["message"], *(m["message"] for m in run.of("log"))]:
        assert str(tmp_path) not in message and "/srv/" not in message
        assert str(os.getpid()) not in message.split()  # "Training process started.", without its pid
