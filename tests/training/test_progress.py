"""The message channel: only progress messages reach stdout, whatever libraries print."""

from __future__ import annotations

import io
import subprocess
import sys

from openft.trainer_contract import parse_progress_line
from openft.training.progress import ProgressChannel

SCRIPT = """
import os, sys
from openft.training.progress import ProgressChannel
progress = ProgressChannel.take_stdout()
print("a stray print")
os.write(1, b"raw bytes on fd 1\\n")
progress.emit("log", level="info", message="hello")
progress.emit("checkpoint", step=3, epoch=1, path="/x", kind="epoch", metrics={})
"""


def test_take_stdout_sends_everything_else_to_stderr() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [parse_progress_line(line) for line in lines] == [
        {"type": "log", "level": "info", "message": "hello"},
        {"type": "checkpoint", "step": 3, "epoch": 1, "path": "/x", "kind": "epoch", "metrics": {}},
    ]
    assert "a stray print" in proc.stderr and "raw bytes on fd 1" in proc.stderr


def test_a_closed_channel_does_not_stop_training() -> None:
    stream = io.StringIO()
    progress = ProgressChannel(stream)
    stream.close()
    progress.emit("log", level="info", message="nobody listens")  # no exception
    progress.emit("log", level="info", message="still fine")
