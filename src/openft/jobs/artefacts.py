"""Which files of a job folder are the job's artefacts: what a succeeded job is for, kept by the retention sweep
(jobs/retention.py) and, with an object store configured, mirrored to it when the job succeeds
(docs/object-storage.md, "Design note").

Everything in the folder is an artefact except what only training or resuming reads: each checkpoint's resume
`state/`, the job's copy of its data, its log and the trainer's lock file.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from openft.jobs.retention import SUCCEEDED_DISPOSABLE_FILES
from openft.trainer_contract import CHECKPOINT_STATE_DIR, CHECKPOINTS_DIR, LOCK_FILE

NOT_ARTEFACTS = frozenset((*SUCCEEDED_DISPOSABLE_FILES, LOCK_FILE))
"""Top-level files of a job folder that are no artefact."""


def is_artefact(relative: PurePosixPath) -> bool:
    """Whether the file at `relative` (inside a job folder) is one of the job's artefacts."""
    parts = relative.parts
    if len(parts) == 1:
        return parts[0] not in NOT_ARTEFACTS
    return not (parts[0] == CHECKPOINTS_DIR and len(parts) > 2 and parts[2] == CHECKPOINT_STATE_DIR)
