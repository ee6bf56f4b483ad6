"""One trainer at a time in a job folder: an exclusive POSIX lock on `output_dir/train.lock`.

When a worker dies (kill -9, a lost machine), its trainer lives on for a moment: it notices that its
parent is gone only at the next step boundary, and then writes a last checkpoint before it exits. Once the
lease expires, another worker (or the same one, restarted) starts a new trainer for the job. If both ran
at once they would write the same folder: the new one rewrites `metrics.jsonl` and prunes checkpoints
while the old one appends and commits. So a trainer takes this lock before it touches anything in the
folder and keeps it until it exits; a new trainer waits for the old one to finish (it resumes from the old
one's last checkpoint, which is exactly as good as any other).

`fcntl.lockf` locks are released by the kernel when the holder dies, whatever the death, so a crashed
trainer never leaves a stale lock. They also work on NFS (v4, or v3 with lockd) when workers on several
machines share the data folder. The holder's pid and host are written into the file, for the message a
waiting trainer logs.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from openft.fsutil import ensure_dir
from openft.trainer_contract import LOCK_FILE

POLL_SECONDS = 0.2
REPORT_EVERY_SECONDS = 30.0


class FolderLock:
    def __init__(self, output_dir: Path):
        self.path = Path(output_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, give_up: Callable[[], bool], report: Callable[[str], None]) -> bool:
        """Block until this process holds the lock (True), or until `give_up()` says so (False).

        `report` is told who holds it when the lock is not free at once, and again every 30 s of waiting.
        """
        ensure_dir(self.path.parent)  # the job folder itself may be new: made durable in its parent
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        started = time.monotonic()
        next_report = started
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                pass
            if give_up():
                os.close(fd)
                return False
            now = time.monotonic()
            if now >= next_report:
                holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process"
                waited = f" (waited {now - started:.0f} s)" if now > started else ""
                # The holder's pid and host are for the operator's log only, not the job's owner.
                print(f"job folder locked by {holder}", file=sys.stderr, flush=True)
                report(
                    f"Waiting for the previous training process of this job to exit before using its folder{waited}."
                )
                next_report = now + REPORT_EVERY_SECONDS
            time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        """Unlock (closing the descriptor releases every lock this process holds on the file)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
