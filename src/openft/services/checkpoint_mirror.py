"""A running job's checkpoints in the object store, so that its job folder is only a cache (docs/object-storage.md,
"Jobs on S3").

With `OPENFT_STORAGE_URL` set, each checkpoint the trainer commits is uploaded by the worker that follows the run,
as one stored folder `checkpoints/<job>.<step_NNNNNN>/` (storage/folders.py: the files, then the manifest with
every file's size and SHA-256, so it is visible only once complete) holding the checkpoint — weights and resume
state — and `metrics.jsonl` up to its step (what the result file and the reconciliation after a crash are built
from). A checkpoint the trainer prunes is deleted there too. The job's own inputs go up once, with its first
checkpoint (`<job>.data`): its copy of its data (the uploaded file may be deleted meanwhile) and, continuing a
fine-tune, the weights it starts from (`parent/`). Before a run starts, whatever
the job folder lacks is pulled in: its data, and the newest stored checkpoint when the folder has nothing as
new (another machine, or a wiped cache); the trainer resumes from it as from its own, and the results are the
same bit for bit (resuming is exact from any checkpoint).

Why the worker uploads and not the trainer: the worker already holds the store and its credentials, and the
trainer stays free of storage (it may run on a Ray node). The cost: a checkpoint committed just before its worker
dies may not be stored yet; the job then resumes from the one before it, still exactly.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

from openft.fsutil import ensure_dir, fsync_dir
from openft.jobs.job_file import JUDGES_DIR, PARENT_DIR
from openft.jobs.validation import DATA_FILES
from openft.storage import FolderMirror
from openft.trainer_contract import (
    CHECKPOINTS_DIR,
    METRICS_FILE,
    checkpoint_dir,
    checkpoint_dir_name,
    committed_checkpoint_steps,
)

log = logging.getLogger(__name__)
META_FILE = "meta.json"
"""The checkpoint's own record of its files and their SHA-256, written last (training/checkpoint.py)."""
_INPUTS = (*(local for _, local, _ in DATA_FILES), PARENT_DIR, JUDGES_DIR)
"""What a job reads besides its checkpoints: its data copy, the weights a continued fine-tune starts from and
a reinforcement job's fine-tuned judges."""


class CheckpointMirror:
    def __init__(self, folders: FolderMirror):
        self._folders = folders

    @staticmethod
    def _name(job_id: str, step: int) -> str:
        return f"{job_id}.{checkpoint_dir_name(step)}"

    def push(self, job_id: str, job_folder: Path, step: int) -> bool:
        """Store the committed checkpoint of `step` (False when it was pruned before it could be read)."""
        source = checkpoint_dir(job_folder, step)
        staging = job_folder / f".mirror-{step}-{uuid.uuid4().hex[:8]}"  # hidden: nothing else looks at it
        try:
            target = staging / CHECKPOINTS_DIR / source.name
            try:
                _link_tree(source, target)
            except FileNotFoundError:
                return False  # pruned (a newer checkpoint exists, which is stored in its turn)
            meta = json.loads((target / META_FILE).read_text(encoding="utf-8"))
            expected = {f"{CHECKPOINTS_DIR}/{source.name}/{path}": sha for path, sha in meta["files"].items()}
            _metrics_up_to(job_folder / METRICS_FILE, step, staging / METRICS_FILE)
            manifest = self._folders.push(self._name(job_id, step), staging)
            stored = {item.path: item.sha256 for item in manifest.files}
            if any(stored.get(path) != sha for path, sha in expected.items()):
                self._folders.delete(self._name(job_id, step))  # torn by a prune mid-read: not a checkpoint
                return False
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._push_data(job_id, job_folder)
        return True

    def _push_data(self, job_id: str, job_folder: Path) -> None:
        """The job's own inputs, once (they never change): its copy of its data and, for a continued fine-tune,
        the weights it starts from (`parent/`)."""
        name = f"{job_id}.data"
        if self._folders.exists(name):
            return
        staging = job_folder / f".mirror-data-{uuid.uuid4().hex[:8]}"
        try:
            ensure_dir(staging)
            for entry in _INPUTS:
                if (job_folder / entry).exists():
                    _link_tree(job_folder / entry, staging / entry, check=False)
            self._folders.push(name, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _restore_data(self, job_id: str, job_folder: Path) -> None:
        missing = [entry for entry in _INPUTS if not (job_folder / entry).exists()]
        name = f"{job_id}.data"
        if not missing or not self._folders.exists(name):
            return
        staging = job_folder / f".restore-data-{uuid.uuid4().hex[:8]}"
        try:
            self._folders.pull(name, staging)
            for entry in missing:
                if (staging / entry).exists():
                    os.replace(staging / entry, job_folder / entry)
            fsync_dir(job_folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def forget(self, job_id: str, step: int) -> None:
        self._folders.delete(self._name(job_id, step))

    def forget_job(self, job_id: str) -> None:
        for name in self._folders.names(f"{job_id}."):
            self._folders.delete(name)

    def stored_steps(self, job_id: str) -> list[int]:
        steps = []
        for name in self._folders.names(f"{job_id}."):
            suffix = name[len(job_id) + 1 :]
            if suffix.startswith("step_") and suffix[5:].isdigit():
                steps.append(int(suffix[5:]))
        return sorted(steps)

    def restore(self, job_id: str, job_folder: Path) -> int | None:
        """Pull what `job_folder` lacks: the job's data, and the newest stored checkpoint unless the folder holds
        one as new; the step of the checkpoint pulled, or None."""
        ensure_dir(job_folder)
        self._restore_data(job_id, job_folder)
        steps = self.stored_steps(job_id)
        local = committed_checkpoint_steps(job_folder)
        if not steps or (local and local[-1] >= steps[-1]):
            return None
        step = steps[-1]
        ensure_dir(job_folder / CHECKPOINTS_DIR)
        staging = job_folder / f".restore-{step}-{uuid.uuid4().hex[:8]}"
        try:
            self._folders.pull(self._name(job_id, step), staging)  # every file's size and hash checked
            name = checkpoint_dir_name(step)
            os.replace(staging / CHECKPOINTS_DIR / name, job_folder / CHECKPOINTS_DIR / name)
            fsync_dir(job_folder / CHECKPOINTS_DIR)
            metrics = job_folder / METRICS_FILE
            if _last_step(metrics) < step:  # the trainer cuts the file back to the step it resumes from
                os.replace(staging / METRICS_FILE, metrics)
                fsync_dir(job_folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("job %s: restored its checkpoint of step %d from the object store", job_id, step)
        return step


def _link_tree(source: Path, target: Path, *, check: bool = True) -> None:
    """Hard links of every file of `source` (a file or a folder; same filesystem: instant, and they keep the
    content if the trainer prunes the checkpoint meanwhile); FileNotFoundError when it is gone or going (`check`:
    a checkpoint without its meta.json is one being pruned)."""
    if source.is_file():
        ensure_dir(target.parent)
        os.link(source, target)
        return
    if check and not (source / META_FILE).is_file():
        raise FileNotFoundError(source)
    for path in sorted(source.rglob("*")):
        relative = PurePosixPath(path.relative_to(source).as_posix())
        if path.is_dir():
            continue
        dest = target.joinpath(*relative.parts)
        ensure_dir(dest.parent)
        try:
            os.link(path, dest)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            shutil.copy2(path, dest)


def _metrics_up_to(source: Path, step: int, dest: Path) -> None:
    """The complete lines of `metrics.jsonl` for steps ≤ `step` (the trainer may be appending the next ones)."""
    kept = []
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # being written
        if json.loads(line)["step"] <= step:
            kept.append(line)
    dest.write_text("".join(kept), encoding="utf-8")


def _last_step(metrics: Path) -> int:
    try:
        lines = [line for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0
