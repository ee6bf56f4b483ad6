"""Checkpoints: everything a resumed run needs to continue bit for bit, in a folder you can inspect.

    checkpoints/step_000012/
        adapter/ or model/      servable weights (PEFT adapter folder, or a full HF model folder)
        state/progress.json     the `LoopState`: step, epoch, position in the epoch, trained tokens,
                                fingerprint, and the numerics a resume keeps: thread count, precision, packing,
                                frozen weights' dtype, micro-batch size
        state/trainer_state.pt  optimizer and LR-scheduler state, RNG states (python, numpy, torch CPU/CUDA)
        meta.json               step, epoch, kind, metrics, sha256 of every other file (written last)

A checkpoint is assembled in a hidden temp folder and renamed into place (`fsutil.commit_dir`), so a
`step_*` folder is either complete or absent; the hashes in meta.json also catch later damage (a disk
error, a hand edit). Exact resume needs *all* of the state above: dropping the optimizer moments, the
scheduler, any RNG state or changing the thread count each changes the weights.

A checkpoint that fails `verify` is never deleted: it is moved aside into `checkpoints/damaged/` for the
operator to look at (a read error on a network disk may be passing, and the folder may be the only copy
of hours of training). Pruning counts only checkpoints that verified, so it never deletes the last good
one. A write that runs out of disk space (ENOSPC, EDQUOT) removes its partial temp folder, keeps every
older checkpoint and raises `DiskFull`, which the trainer turns into a paused job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from openft.fsutil import commit_dir, ensure_dir, fsync_dir, remove_tree, temp_sibling
from openft.trainer_contract import CHECKPOINT_STATE_DIR, CHECKPOINTS_DIR, TrainJobSpec, checkpoint_dir, checkpoint_step

META_FILE = "meta.json"
LOOP_STATE_FILE = "progress.json"
"""A checkpoint's `LoopState` (the file name predates the class's; checkpoints on disk keep it)."""
TRAINER_STATE_FILE = "trainer_state.pt"
WEIGHT_DIRS = ("adapter", "model")
DAMAGED_DIR = "damaged"
"""Under checkpoints/: checkpoints that failed verification, kept for the operator (never read, never pruned)."""
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_FULL_FREE_BYTES = 4 << 20
"""A failed write with less free space than this left is taken as a full disk (torch.save reports ENOSPC as a
bare RuntimeError without an errno)."""


class DiskFull(Exception):
    """The disk (or quota) filled up while writing the checkpoint of `step`; nothing of it was left behind."""

    def __init__(self, step: int, folder: Path):
        super().__init__(f"no space left on the device of {folder} while writing the checkpoint of step {step}")
        self.step = step
        self.folder = folder


def _free_bytes(folder: Path) -> int | None:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether `exc`, raised while writing into `folder`, means the disk or the quota is full.

    OSError carries the errno; safetensors names the error in its text; torch.save gives neither, so a
    failure with (almost) no space left on the folder's device counts too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(current) for code in DISK_FULL_ERRNOS):
            return True
        current = current.__cause__ or current.__context__
    free = _free_bytes(folder)
    return free is not None and free < DISK_FULL_FREE_BYTES


CheckpointKind = Literal["epoch", "pause", "periodic"]
"""epoch: at each epoch end (listed by the API, as OpenAI's are); pause: on a stop request (pause, worker
shutdown, worker gone); periodic: every `checkpoint_every_steps` / `_minutes`, a resume point after a crash."""


@dataclass
class LoopState:
    """Where the training loop stands after `step` optimizer steps (always at a step boundary), and the
    numerics it ran with: what a resume needs besides the optimizer, scheduler and RNG states.

    Not to be confused with the progress *messages* the trainer sends the worker (`progress.ProgressChannel`).
    """

    step: int
    epoch: int
    """0-based epoch the next step belongs to."""
    position: int
    """Batches of that epoch already trained."""
    trained_tokens: int
    num_threads: int
    fingerprint: str
    precision: Literal["fp32", "bf16"] = "fp32"
    """The forward's precision; the default is what checkpoints written before this field trained with."""
    packing: bool = False
    """Whether micro-batches were packed (see `packing`); likewise defaults to what older checkpoints did."""
    frozen_weights: Literal["fp32", "bf16"] = "fp32"
    """The dtype LoRA's frozen base weights were kept in (`model.frozen_dtype`); older checkpoints: fp32."""
    workers: int = 1
    """Trainer processes (ranks) that wrote it (`distributed.py`); a resume needs as many (older checkpoints: 1)."""
    attention: str | None = None
    """The attention kernel (`attention.pick_attention`; None: transformers' default, as every CPU run and every
    checkpoint written before the choice): kernels round differently, so a resume keeps it."""
    micro_batch_size: int | None = None
    """Examples per forward pass, as the memory planner picked it (`memory_plan`): it changes how the loss's floats
    are summed, so a resume keeps it. None (checkpoints written before the planner): the job's `micro_batch_size`."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path

    @property
    def weights_dir(self) -> Path:
        for name in WEIGHT_DIRS:
            if (self.path / name).is_dir():
                return self.path / name
        raise FileNotFoundError(f"{self.path} has neither adapter/ nor model/")

    def meta(self) -> dict[str, Any]:
        return json.loads((self.path / META_FILE).read_text(encoding="utf-8"))

    def kind(self) -> str | None:
        """The kind in meta.json, or None when it cannot be read."""
        try:
            kind = self.meta().get("kind")
        except (OSError, ValueError):
            return None
        return kind if isinstance(kind, str) else None


def list_checkpoints(output_dir: Path) -> list[Checkpoint]:
    """Committed checkpoint folders, oldest first (verified or not: see `verify`)."""
    root = output_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir():
            found.append(Checkpoint(step, entry))
    return sorted(found, key=lambda c: c.step)


def remove_stale_temps(output_dir: Path) -> None:
    """Delete temp folders left by a process killed while writing a checkpoint (never visible as one)."""
    root = output_dir / CHECKPOINTS_DIR
    if root.is_dir():
        for entry in root.glob(".tmp-*"):
            remove_tree(entry)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file() and p != root
    }


def verify(checkpoint: Checkpoint) -> str | None:
    """Why the checkpoint cannot be trusted, or None when meta.json is there and every hash matches."""
    try:
        meta = checkpoint.meta()
    except (OSError, ValueError) as exc:
        return f"meta.json is missing or unreadable ({exc.__class__.__name__})"
    files = meta.get("files")
    if meta.get("step") != checkpoint.step or not isinstance(files, dict):
        return "meta.json does not describe this checkpoint"
    required = {f"{CHECKPOINT_STATE_DIR}/{LOOP_STATE_FILE}", f"{CHECKPOINT_STATE_DIR}/{TRAINER_STATE_FILE}"}
    if not required <= set(files) or not any(name.split("/")[0] in WEIGHT_DIRS for name in files):
        return "meta.json lists no weights or no training state"
    for name, expected in files.items():
        path = checkpoint.path / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            actual = sha256_file(path)
        except OSError as exc:  # an I/O error is a reason not to trust it, never a reason to stop training
            return f"{name} cannot be read ({exc.__class__.__name__})"
        if actual != expected:
            return f"{name} does not match its hash"
    return None


# RNG state ------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Every random generator training draws from. Plain types only, so `torch.load(weights_only=True)` works."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# Writing and reading ----------------------------------------------------------------------------


def write_checkpoint(
    output_dir: Path,
    *,
    loop_state: LoopState,
    epoch: int,
    kind: CheckpointKind,
    metrics: dict[str, Any],
    trainer_state: dict[str, Any],
    save_weights: Callable[[Path], None],
    weights_dir: Literal["adapter", "model"],
    shared_state: Callable[[Path], None] | None = None,
) -> Checkpoint:
    """Assemble the checkpoint in a temp folder, hash it, then commit it as `checkpoint_dir_name(step)`.

    `epoch` is the 1-based epoch of the last step trained (what users see); `loop_state.epoch` is the
    0-based epoch the next step belongs to (what resume needs). `shared_state`, with several ranks, writes
    what every rank writes into the temp folder's state/ before anything else (`distributed.write_checkpoint`):
    it is hashed and committed with the rest.
    """
    final = checkpoint_dir(output_dir, loop_state.step)
    try:
        ensure_dir(final.parent)
    except OSError as exc:
        if is_disk_full(exc, output_dir):
            raise DiskFull(loop_state.step, output_dir) from exc
        raise
    tmp = temp_sibling(final)
    try:
        tmp.mkdir()
        state = tmp / CHECKPOINT_STATE_DIR
        if shared_state is not None:
            shared_state(state)
        save_weights(tmp / weights_dir)
        state.mkdir(exist_ok=True)
        (state / LOOP_STATE_FILE).write_text(json.dumps(asdict(loop_state), indent=2), encoding="utf-8")
        torch.save(trainer_state, state / TRAINER_STATE_FILE)
        meta = {
            "step": loop_state.step,
            "epoch": epoch,
            "kind": kind,
            "metrics": metrics,
            "files": _hash_tree(tmp),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        commit_dir(tmp, final)  # fsyncs every file, then renames: visible only when complete
    except BaseException as exc:
        full = isinstance(exc, Exception) and is_disk_full(exc, final.parent)  # before removing frees space
        remove_tree(tmp)
        if full:
            raise DiskFull(loop_state.step, final.parent) from exc
        raise
    return Checkpoint(loop_state.step, final)


def read_state(checkpoint: Checkpoint) -> tuple[LoopState, dict[str, Any]]:
    """The loop state and the optimizer/scheduler/RNG state of a verified checkpoint."""
    state_dir = checkpoint.path / CHECKPOINT_STATE_DIR
    loop_state = LoopState(**json.loads((state_dir / LOOP_STATE_FILE).read_text(encoding="utf-8")))
    trainer_state = torch.load(state_dir / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    return loop_state, trainer_state


@dataclass
class Pruned:
    removed: list[Checkpoint] = field(default_factory=list)
    """Superseded checkpoints, deleted."""
    set_aside: list[tuple[Checkpoint, str, Path]] = field(default_factory=list)
    """Checkpoints that failed verification: (the checkpoint, why, where it was moved)."""


def set_aside(checkpoint: Checkpoint) -> Path:
    """Move a damaged checkpoint out of the `step_*` names into checkpoints/damaged/ (never deleted)."""
    damaged = checkpoint.path.parent / DAMAGED_DIR
    ensure_dir(damaged)
    target = damaged / f"{checkpoint.path.name}.{time.time_ns()}"
    os.replace(checkpoint.path, target)
    fsync_dir(checkpoint.path.parent)
    fsync_dir(damaged)
    return target


def prune(output_dir: Path, keep: int, *, verified: set[int] | None = None) -> Pruned:
    """Keep the newest `keep` (at least 1) checkpoints that verify; delete older ones and superseded periodic ones.

    A periodic checkpoint exists only to resume from after a crash: once a newer good checkpoint of any
    kind exists it serves no one (it is not listed by the API), so it goes. The rest count against `keep`
    whatever their kind, the newest good one (the resume point) always kept. Only checkpoints that verify
    count: one that does not is set aside (see `set_aside`), never deleted, so a damaged newest checkpoint
    can never make pruning delete the last good one. `verified` holds the steps already known good (the
    caller wrote or verified them); each other candidate is verified once and added to it.
    """
    verified = set() if verified is None else verified
    result = Pruned()
    kept: list[Checkpoint] = []
    for checkpoint in reversed(list_checkpoints(output_dir)):  # newest first
        if len(kept) >= max(1, keep):
            result.removed.append(checkpoint)
            continue
        if checkpoint.step not in verified:
            problem = verify(checkpoint)
            if problem is not None:
                result.set_aside.append((checkpoint, problem, set_aside(checkpoint)))
                continue
            verified.add(checkpoint.step)
        if kept and checkpoint.kind() == "periodic":
            result.removed.append(checkpoint)
        else:
            kept.append(checkpoint)
    result.removed.sort(key=lambda c: c.step)
    for checkpoint in result.removed:
        remove_tree(checkpoint.path)
        verified.discard(checkpoint.step)
    return result


# What a checkpoint must agree with ---------------------------------------------------------------

_FINGERPRINT_FIELDS = (
    "base_model",
    "method",
    "hyperparameters",
    "seed",
    "lora",
    "base_learning_rate",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "max_seq_len",
    "micro_batch_size",
)
"""Spec fields that change what training computes (and `dpo`, `quantization` and `compile`, when set). Paths,
thread count, precision, packing, checkpoint, metrics and validation settings are left out: changing them does not
change the weights (threads, precision and packing are pinned by the checkpoint; validation draws no random numbers)."""


def fingerprint(spec: TrainJobSpec) -> str:
    """sha256 of the data file(s) and the training-relevant spec fields: a resume refuses other data."""
    digest = hashlib.sha256()
    for path in (spec.training_file, spec.validation_file):
        digest.update(b"\x00file\x00")
        if path is not None:
            digest.update(sha256_file(Path(path)).encode())
    fields = spec.model_dump(mode="json", include=set(_FINGERPRINT_FIELDS))
    fields["base_model"].pop("path", None)  # the same model may live at another path after a move
    if spec.dpo is not None:  # only then: checkpoints of jobs without it keep their fingerprint
        fields["dpo"] = spec.dpo.model_dump(mode="json")
    if spec.quantization is not None:  # QLoRA trains against a rounded base; LoRA jobs keep their fingerprint
        fields["quantization"] = spec.quantization
    if spec.compile:  # compiled kernels round differently (compile.py); uncompiled jobs keep their fingerprint
        fields["compile"] = True
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return digest.hexdigest()
