"""The trainer's only channel to the worker: one JSON object per line on the real standard output.

Libraries print whatever they like (transformers' warnings, tqdm bars, a stray `print`), and any such
line on stdout would sit between our messages. So at start the trainer keeps a private duplicate of
the stdout descriptor for its messages and points descriptor 1 at stderr: everything else ends up in
the log, and the message channel carries messages only.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO

from openft.redact import redact_paths
from openft.trainer_contract import ProgressType, progress_line


class ProgressChannel:
    """Writes progress messages (see `openft.trainer_contract.ProgressType`), one flushed line each."""

    def __init__(self, stream: TextIO):
        self._stream: TextIO | None = stream

    @classmethod
    def take_stdout(cls) -> ProgressChannel:
        """Claim the process's stdout for messages and send everything else written to fd 1 to stderr."""
        sys.stdout.flush()
        channel = os.dup(1)
        os.dup2(2, 1)
        return cls(os.fdopen(channel, "w", encoding="utf-8", buffering=1))

    def emit(self, kind: ProgressType, /, **fields: Any) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(progress_line(kind, **fields))
            self._stream.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            # The reader is gone (worker died). Keep going to the next step boundary, where the
            # parent watch (StopRequest) stops with a checkpoint that a new worker resumes from.
            self._stream = None
            print(f"progress channel closed ({exc}); continuing without messages", file=sys.stderr)

    def log(self, level: str, message: str) -> None:
        """A job event for the job's owner (server paths redacted) and the full line in train.log."""
        self.emit("log", level=level, message=redact_paths(message))
        print(f"[{level}] {message}", file=sys.stderr, flush=True)
