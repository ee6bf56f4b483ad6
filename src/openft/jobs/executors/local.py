"""The local executor: the trainer subprocess of one job attempt on this machine; start it, read its progress
messages, stop it at a checkpoint or kill it (docs/design.md §3).

The process is `openft train job.json` (the command a person can run by hand). Its stdout carries JSON-lines
progress messages (openft.trainer_contract); its stderr goes to `train.log` in the job folder. It runs in its
own session, so Ctrl-C on the server reaches it only through us. A job with `compute.workers` > 1 is the same
command: it becomes the launcher of that many trainer processes (training/launcher.py), which stay in its
process group and behind its stdout, exit code and signals, so nothing here changes but the kill (the group).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from openft.trainer_contract import PARENT_PID_ENV, parse_progress_line

log = logging.getLogger(__name__)

Inbox = queue.SimpleQueue[dict[str, Any] | None]
"""Progress messages in the order the trainer wrote them; None once its output has ended."""


def train_command(spec_path: Path) -> list[str]:
    """`openft train JOB.json`, run with this interpreter so the same installation trains."""
    return [sys.executable, "-m", "openft", "train", str(spec_path)]


class TrainerProcess:
    def __init__(self, job_id: str, spec_path: Path):
        self.job_id = job_id
        self.spec_path = spec_path
        self.log_path = spec_path.parent / "train.log"
        self._process: subprocess.Popen[str] | None = None
        self._ready = False
        self._stop_pending = False
        self._stop_sent = False

    def start(self) -> None:
        log_file = open(self.log_path, "ab")  # noqa: SIM115 — handed to the child
        try:
            self._process = subprocess.Popen(
                train_command(self.spec_path),
                stdout=subprocess.PIPE,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
                start_new_session=True,  # Ctrl-C on the server must not hit the trainer directly
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                    PARENT_PID_ENV: str(os.getpid()),
                },
            )
        finally:
            log_file.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def read_into(self, inbox: Inbox) -> None:
        """Pass the trainer's messages on as they come (None at the end of its output); runs on its own thread."""
        assert self._process is not None and self._process.stdout is not None
        try:
            for line in self._process.stdout:
                message = parse_progress_line(line)
                if message is None:
                    log.debug("trainer %s: %s", self.job_id, line.rstrip())
                    continue
                if not self._ready:
                    self._ready = True
                    if self._stop_pending:
                        self.request_stop()
                inbox.put(message)
        finally:
            inbox.put(None)

    def request_stop(self) -> None:
        """Ask the trainer to finish its step, checkpoint and exit (SIGUSR1).

        Held back until the trainer's first message: before it has installed its handlers, SIGUSR1 would kill
        it instead of stopping it cleanly.
        """
        if not self._ready:
            self._stop_pending = True
            return
        if self._process is not None and self._process.poll() is None and not self._stop_sent:
            self._stop_sent = True
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGUSR1)

    def kill(self) -> None:
        """No checkpoint is needed (cancel, a lost claim, a shutdown out of time): free the process now.

        Its whole process group: a job with several workers is a launcher and its ranks, all in the group the
        trainer leads (it starts its own session). The ranks would also exit once the launcher is gone
        (training/launcher.py), but a kill should not wait for them to notice.
        """
        if self._process is not None and self._process.poll() is None:
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()

    def wait(self) -> int:
        assert self._process is not None
        return self._process.wait()

    def log_tail(self, lines: int = 3) -> str:
        return log_tail(self.log_path, lines)


def log_tail(log_path: Path, lines: int = 3) -> str:
    """The last lines of a job's train.log, for the operator's log (they name server paths: never the owner's)."""
    try:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return " | ".join(line.strip() for line in tail)[-500:]


class LocalExecutor:
    """Trainers as subprocesses of this worker (the default)."""

    name = "local"

    def trainer(self, job_id: str, spec_path: Path) -> TrainerProcess:
        return TrainerProcess(job_id, spec_path)

    def has_room(self) -> bool:
        return True  # the worker's max_jobs is this machine's bound

    def close(self) -> None:
        pass
