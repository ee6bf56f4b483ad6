"""Checkpoint folders (write, verify, prune), RNG state, the data fingerprint, metrics.jsonl and results.csv."""

from __future__ import annotations

import gc
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from openft.trainer_contract import TrainJobSpec, checkpoint_dir, checkpoint_dir_name, checkpoint_step
from openft.training import checkpoint as ckpt
from openft.training.metrics import MetricsLog, read_metrics, write_results_csv
from tests.support.tmpfs import mounted_tmpfs
from tests.training.conftest import job_spec


def _write(output_dir: Path, step: int, kind: ckpt.CheckpointKind = "epoch") -> ckpt.Checkpoint:
    def save_weights(dest: Path) -> None:
        dest.mkdir()
        (dest / "adapter_model.safetensors").write_bytes(b"weights-%d" % step)
        (dest / "adapter_config.json").write_text("{}")

    return ckpt.write_checkpoint(
        output_dir,
        loop_state=ckpt.LoopState(step, step // 3, step % 3, 10 * step, 1, "f" * 64),
        epoch=1,
        kind=kind,
        metrics={"step": step, "train_loss": 0.5},
        trainer_state={"optimizer": {"state": {}}, "scheduler": {"last_epoch": step}, "rng": ckpt.capture_rng()},
        save_weights=save_weights,
        weights_dir="adapter",
    )


def test_written_checkpoint_verifies_and_reads_back(tmp_path: Path) -> None:
    saved = _write(tmp_path, 12)
    assert saved.path == tmp_path / "checkpoints" / "step_000012"
    assert ckpt.verify(saved) is None
    meta = saved.meta()
    assert meta["kind"] == "epoch" and meta["step"] == 12 and meta["metrics"]["train_loss"] == 0.5
    assert set(meta["files"]) == {
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "state/progress.json",
        "state/trainer_state.pt",
    }
    loop_state, state = ckpt.read_state(saved)
    assert loop_state == ckpt.LoopState(12, 4, 0, 120, 1, "f" * 64)
    assert state["scheduler"] == {"last_epoch": 12}
    assert saved.weights_dir == saved.path / "adapter"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize(
    "damage",
    ["flip_weights", "drop_meta", "drop_state", "truncate_meta", "wrong_step"],
)
def test_damaged_checkpoints_do_not_verify(tmp_path: Path, damage: str) -> None:
    saved = _write(tmp_path, 3)
    if damage == "flip_weights":
        (saved.path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights-4")
    elif damage == "drop_meta":
        (saved.path / "meta.json").unlink()
    elif damage == "drop_state":
        (saved.path / "state" / "trainer_state.pt").unlink()
    elif damage == "truncate_meta":
        (saved.path / "meta.json").write_text('{"step": 3, "fi')
    else:
        meta = saved.meta()
        meta["step"] = 4
        (saved.path / "meta.json").write_text(json.dumps(meta))
    assert ckpt.verify(saved) is not None


def test_a_failed_write_leaves_no_checkpoint(tmp_path: Path) -> None:
    def broken(dest: Path) -> None:
        dest.mkdir()
        raise OSError("disk full")

    with pytest.raises(OSError):
        ckpt.write_checkpoint(
            tmp_path,
            loop_state=ckpt.LoopState(1, 0, 1, 1, 1, "x"),
            epoch=1,
            kind="pause",
            metrics={},
            trainer_state={},
            save_weights=broken,
            weights_dir="adapter",
        )
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_list_prune_and_stale_temps(tmp_path: Path) -> None:
    for step in (3, 6, 9, 12):
        _write(tmp_path, step)
    (tmp_path / "checkpoints" / ".tmp-step_000015-1-abc").mkdir()
    (tmp_path / "checkpoints" / "step_x").mkdir()
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [3, 6, 9, 12]
    removed = ckpt.prune(tmp_path, 2).removed
    assert [c.step for c in removed] == [3, 6]
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [9, 12]
    assert [c.step for c in ckpt.prune(tmp_path, 0).removed] == [9]  # never fewer than one
    ckpt.remove_stale_temps(tmp_path)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert ckpt.list_checkpoints(tmp_path / "nowhere") == []


def test_checkpoint_folder_names_round_trip_and_sort_as_steps() -> None:
    """One pair builds and parses `step_000012` for the trainer, the worker and the entry point."""
    assert checkpoint_dir_name(12) == "step_000012"
    assert checkpoint_dir_name(1_234_567) == "step_1234567"
    names = [checkpoint_dir_name(step) for step in (0, 9, 10, 999_999)]
    assert sorted(names) == names
    assert [checkpoint_step(name) for name in names] == [0, 9, 10, 999_999]
    for other in ("step_12", "step_x", ".tmp-step_000015-1-abc", "damaged", "step_000012.17"):
        assert checkpoint_step(other) is None, other
    assert checkpoint_dir(Path("/out"), 3) == Path("/out/checkpoints/step_000003")


def test_periodic_checkpoints_count_against_keep_and_go_once_superseded(tmp_path: Path) -> None:
    for step, kind in ((3, "epoch"), (4, "periodic"), (5, "periodic")):
        _write(tmp_path, step, kind=kind)
    assert [c.step for c in ckpt.prune(tmp_path, 3).removed] == [4]  # superseded by 5: only a resume point
    assert [(c.step, c.kind()) for c in ckpt.list_checkpoints(tmp_path)] == [(3, "epoch"), (5, "periodic")]
    for step, kind in ((6, "epoch"), (7, "pause"), (8, "periodic")):
        _write(tmp_path, step, kind=kind)
    # 5 is superseded; of 3, 6, 7 and the newest (8) only 3 are kept, the periodic newest among them
    assert [c.step for c in ckpt.prune(tmp_path, 3).removed] == [3, 5]
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [6, 7, 8]
    assert [c.step for c in ckpt.prune(tmp_path, 1).removed] == [6, 7]  # the resume point stays, whatever its kind


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(ckpt.capture_rng(), tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_fingerprint_covers_data_and_training_settings_only(tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"messages": []}\n')
    data = {"train": train, "valid": train}
    model = tmp_path / "model"

    def fp(**overrides: object) -> str:
        return ckpt.fingerprint(TrainJobSpec.model_validate(job_spec(tmp_path, model, data, **overrides)))

    base = fp()
    assert fp(output_dir="/elsewhere", num_threads=4, keep_checkpoints=9, metrics_every=5, job_id="other") == base
    assert fp(base_model={"name": "tiny", "source": "local", "path": "/moved"}) == base
    assert fp(seed=1) != base
    assert fp(lora=None) != base
    assert fp(micro_batch_size=1) != base
    assert fp(validation_file=None) != base
    train.write_text('{"messages": [1]}\n')
    assert fp() != base


def test_metrics_log_keeps_each_step_once_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.restart_after(0)
    for step in (1, 2, 3, 4):
        log.append({"step": step, "train_loss": step / 3})
    log.sync()
    log.close()
    with open(path, "a") as handle:
        handle.write('{"step": 5, "train_lo')  # torn by a kill
    log.restart_after(2)
    log.append({"step": 3, "train_loss": 0.1})
    log.close()
    assert [(r["step"], r["train_loss"]) for r in read_metrics(path)] == [(1, 1 / 3), (2, 2 / 3), (3, 0.1)]


def test_results_csv_round_trips_floats_exactly(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    values = [0.1 + 0.2, 1 / 3, 2.5e-9]
    rows = [
        {"step": 1, "train_loss": values[0], "train_mean_token_accuracy": 0.5, "full_valid_loss": None},
        {"step": 2, "train_loss": values[1], "train_mean_token_accuracy": 1.0, "full_valid_loss": values[2]},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_results_csv(metrics, tmp_path / "results.csv")
    lines = (tmp_path / "results.csv").read_text().splitlines()
    assert lines[0].startswith("step,train_loss,")
    first, second = (line.split(",") for line in lines[1:])
    assert first == ["1", repr(values[0]), "0.5", "", "", "", ""]
    assert float(second[1]) == values[1] and float(second[5]) == values[2]


def test_pruning_counts_only_good_checkpoints_and_sets_damaged_ones_aside(tmp_path: Path) -> None:
    """A damaged newest checkpoint must not count as one of the kept: pruning would delete the last good one."""
    for step in (3, 6):
        _write(tmp_path, step)
    newest = _write(tmp_path, 9)
    (newest.path / "adapter" / "adapter_model.safetensors").write_bytes(b"a disk error")
    pruned = ckpt.prune(tmp_path, 1)
    assert [c.step for c in pruned.removed] == [3]  # 6 is the newest good one: kept
    assert [(c.step, aside.parent.name) for c, _, aside in pruned.set_aside] == [(9, ckpt.DAMAGED_DIR)]
    assert "does not match its hash" in pruned.set_aside[0][1]
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [6]
    [aside] = (tmp_path / "checkpoints" / ckpt.DAMAGED_DIR).iterdir()  # kept for the operator, not deleted
    assert (aside / "adapter" / "adapter_model.safetensors").read_bytes() == b"a disk error"
    assert ckpt.verify(ckpt.list_checkpoints(tmp_path)[0]) is None


def test_pruning_trusts_the_steps_it_is_told_are_verified(tmp_path: Path) -> None:
    for step in (3, 6):
        _write(tmp_path, step)
    (checkpoint_dir(tmp_path, 3) / "meta.json").write_text("{")  # would not verify, if it were hashed
    verified = {6}
    assert [c.step for c in ckpt.prune(tmp_path, 1, verified=verified).removed] == [3]  # beyond keep: not read
    assert verified == {6}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system: a real ENOSPC, whatever library does the writing."""
    with mounted_tmpfs(tmp_path / "small-disk", "1m") as folder:
        yield folder


@pytest.mark.parametrize("writer", ["torch", "plain"])
def test_a_full_disk_raises_disk_full_and_leaves_older_checkpoints(small_disk: Path, writer: str) -> None:
    kept = _write(small_disk, 3)

    def big_weights(dest: Path) -> None:
        dest.mkdir()
        if writer == "torch":  # torch.save reports ENOSPC as a RuntimeError without an errno
            torch.save({"w": torch.zeros(1 << 20)}, dest / "adapter_model.pt")
        else:
            (dest / "adapter_model.safetensors").write_bytes(b"\0" * (2 << 20))

    with pytest.raises(ckpt.DiskFull) as excinfo:
        ckpt.write_checkpoint(
            small_disk,
            loop_state=ckpt.LoopState(6, 2, 0, 60, 1, "f" * 64),
            epoch=2,
            kind="epoch",
            metrics={"step": 6},
            trainer_state={},
            save_weights=big_weights,
            weights_dir="adapter",
        )
    assert excinfo.value.step == 6
    assert [c.step for c in ckpt.list_checkpoints(small_disk)] == [3] and ckpt.verify(kept) is None
    assert not list((small_disk / "checkpoints").glob(".tmp-*"))  # the partial folder is gone
    del excinfo  # its traceback holds torch's writer, and so the deleted file's blocks
    gc.collect()
    assert shutil.disk_usage(small_disk).free > 512 << 10  # the space of the partial write is free again
