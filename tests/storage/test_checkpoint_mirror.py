"""A running job's checkpoints in a real S3 store (SeaweedFS on loopback): stored whole with the job's metrics up
to their step and its data once, restored into an empty (or older) job folder, forgotten with the job."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest

from openft.services.checkpoint_mirror import CheckpointMirror
from openft.storage import S3BlobStore
from openft.trainer_contract import checkpoint_dir, committed_checkpoint_steps
from tests.support.seaweedfs import SeaweedFS


@pytest.fixture
def mirror(seaweedfs: SeaweedFS, tmp_path: Path) -> CheckpointMirror:
    store = S3BlobStore(
        seaweedfs.bucket, f"t-{uuid.uuid4().hex[:8]}", endpoint_url=seaweedfs.endpoint_url, cache_dir=tmp_path / "c"
    )
    return CheckpointMirror(store.folders("checkpoints"))


def _commit_checkpoint(job: Path, step: int) -> None:
    """A checkpoint as the trainer commits it: weights, resume state, meta.json (hashes of the others) last."""
    folder = checkpoint_dir(job, step)
    files = {"adapter/adapter_model.safetensors": f"weights {step}".encode(), "state/trainer_state.pt": b"x" * step}
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    hashes = {relative: hashlib.sha256(data).hexdigest() for relative, data in files.items()}
    (folder / "meta.json").write_text(json.dumps({"step": step, "files": hashes}))


def _job_folder(root: Path, steps: int) -> Path:
    job = root / "ftjob-abc"
    job.mkdir(parents=True)
    (job / "training.jsonl").write_text('{"messages": []}\n')
    (job / "parent" / "adapter").mkdir(parents=True)  # a continued fine-tune starts from these weights
    (job / "parent" / "adapter" / "adapter_model.safetensors").write_bytes(b"parent weights")
    lines = "".join(json.dumps({"step": s, "train_loss": 1.0 / s}) + "\n" for s in range(1, steps + 1))
    (job / "metrics.jsonl").write_text(lines + '{"step": 99, "train_lo')  # the trainer mid-write
    return job


def test_a_checkpoint_is_stored_with_its_metrics_and_restored_into_an_empty_folder(
    mirror: CheckpointMirror, tmp_path: Path
) -> None:
    job = _job_folder(tmp_path / "a", steps=9)
    for step in (4, 8):
        _commit_checkpoint(job, step)
        assert mirror.push("ftjob-abc", job, step)
    assert mirror.stored_steps("ftjob-abc") == [4, 8]

    elsewhere = tmp_path / "b" / "ftjob-abc"  # another machine, or the cache wiped
    assert mirror.restore("ftjob-abc", elsewhere) == 8
    assert committed_checkpoint_steps(elsewhere) == [8]
    for name in ("adapter/adapter_model.safetensors", "state/trainer_state.pt", "meta.json"):
        assert (checkpoint_dir(elsewhere, 8) / name).read_bytes() == (checkpoint_dir(job, 8) / name).read_bytes()
    metrics = [json.loads(line)["step"] for line in (elsewhere / "metrics.jsonl").read_text().splitlines()]
    assert metrics == list(range(1, 9))  # up to the checkpoint's step, not the line being written
    assert (elsewhere / "training.jsonl").read_text() == '{"messages": []}\n'
    assert (elsewhere / "parent" / "adapter" / "adapter_model.safetensors").read_bytes() == b"parent weights"
    assert mirror.restore("ftjob-abc", elsewhere) is None  # it holds the newest already


def test_a_folder_with_a_newer_checkpoint_keeps_it(mirror: CheckpointMirror, tmp_path: Path) -> None:
    job = _job_folder(tmp_path / "a", steps=12)
    _commit_checkpoint(job, 4)
    mirror.push("ftjob-abc", job, 4)
    _commit_checkpoint(job, 12)  # committed, its worker died before storing it
    assert mirror.restore("ftjob-abc", job) is None
    assert committed_checkpoint_steps(job) == [4, 12]


def test_a_checkpoint_pruned_before_it_was_read_is_not_stored(mirror: CheckpointMirror, tmp_path: Path) -> None:
    job = _job_folder(tmp_path / "a", steps=4)
    assert not mirror.push("ftjob-abc", job, 4)  # no such checkpoint (pruned)
    _commit_checkpoint(job, 4)
    (checkpoint_dir(job, 4) / "adapter" / "adapter_model.safetensors").write_bytes(b"torn")  # not what meta says
    assert not mirror.push("ftjob-abc", job, 4)
    assert mirror.stored_steps("ftjob-abc") == []


def test_pruned_and_finished_jobs_checkpoints_are_forgotten(mirror: CheckpointMirror, tmp_path: Path) -> None:
    job = _job_folder(tmp_path / "a", steps=8)
    for step in (4, 8):
        _commit_checkpoint(job, step)
        mirror.push("ftjob-abc", job, step)
    mirror.forget("ftjob-abc", 4)
    assert mirror.stored_steps("ftjob-abc") == [8]
    mirror.forget_job("ftjob-abc")
    assert mirror.stored_steps("ftjob-abc") == []
    assert mirror.restore("ftjob-abc", tmp_path / "c" / "ftjob-abc") is None
