"""The processes of a job on this machine, found by their command line (/proc), for tests that kill or count them."""

from __future__ import annotations

import os
from pathlib import Path


def training_processes(job_id: str) -> list[int]:
    """Pids of the job's trainer (`openft train …/job.json`), launcher and ranks (`openft.training.entrypoint`),
    zombies aside."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if job_id in cmdline and ("openft train" in cmdline or "openft.training" in cmdline) and state != "Z":
            found.append(int(entry.name))
    return found
