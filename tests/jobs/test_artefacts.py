"""Which files of a job folder are artefacts (mirrored to an object store when the job succeeds)."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from openft.jobs.artefacts import is_artefact


@pytest.mark.parametrize(
    "path",
    [
        "model/adapter_model.safetensors",
        "model/config.json",
        "checkpoints/step_000004/adapter/adapter_model.safetensors",
        "checkpoints/step_000004/meta.json",
        "results.csv",
        "metrics.jsonl",
        "job.json",
        "parent/model.safetensors",
    ],
)
def test_what_a_succeeded_job_is_for_is_an_artefact(path: str) -> None:
    assert is_artefact(PurePosixPath(path))


@pytest.mark.parametrize(
    "path",
    [
        "training.jsonl",
        "validation.jsonl",
        "train.log",
        "train.lock",
        "checkpoints/step_000004/state/optimizer.pt",
        "checkpoints/step_000004/state/rng.json",
    ],
)
def test_what_only_training_reads_is_not(path: str) -> None:
    assert not is_artefact(PurePosixPath(path))
