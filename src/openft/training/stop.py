"""A stop request: the trainer finishes the step in flight, checkpoints and says `stopped` (docs/design.md §3.4).

Its own module, free of torch, because the launcher of a several-process job (`launcher.py`) honours it too
and imports nothing heavy.
"""

from __future__ import annotations

import os
import signal
from typing import Any

WORKER_GONE = "the exit of the worker that started it"


class StopRequest:
    """Set from a signal handler, or when the worker that started us is gone; looked at between optimizer
    steps only. An orphaned trainer must not keep writing checkpoints that a new worker will also write, so
    it stops at the next step boundary (with a checkpoint) when its parent process changes."""

    def __init__(self, parent_pid: int | None = None) -> None:
        self._requested = False
        self.signal_name: str | None = None
        self.parent_pid = parent_pid

    @property
    def requested(self) -> bool:
        if not self._requested and self.parent_pid is not None and os.getppid() != self.parent_pid:
            self._requested, self.signal_name = True, WORKER_GONE
        return self._requested

    def __call__(self, signum: int, _frame: Any) -> None:
        self._requested = True
        self.signal_name = signal.Signals(signum).name

    def request(self, reason: str) -> None:
        """A stop asked for otherwise than by a signal to this process (`reason`: a signal's name, or why)."""
        self._requested, self.signal_name = True, reason
