"""Where a job's trainer runs: the seam between the worker loop and the machines (docs/design.md §3.8).

The worker loop (jobs/worker.py) claims jobs and keeps their leases; the recorder (jobs/recorder.py) turns
progress messages into rows; an executor starts, signals and watches one attempt's training run and hands the
recorder the messages in order. Two executors:

- `local` (local.py): `openft train job.json` as a subprocess of the worker; with `compute.workers` N > 1 that
  process launches N ranks on this machine (training/launcher.py).
- `ray` (ray_run.py): one Ray Train run per attempt on a Ray cluster, one Ray worker per rank, each running the
  same rank program (`python -m openft.training.entrypoint job.json`) as the launcher's ranks.

Both give the runner a `TrainerHandle`: the same messages, the same stop (checkpoint, then exit), the same kill
and the same exit codes (openft.trainer_contract.ExitCode), so pause, resume, cancel and crash recovery are one
code path (jobs/runner.py, jobs/outcome.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from openft.jobs.executors.local import Inbox, LocalExecutor, TrainerProcess

__all__ = ["Executor", "Inbox", "LocalExecutor", "TrainerHandle", "TrainerProcess", "build_executor"]


class TrainerHandle(Protocol):
    """One attempt's training run, as the runner drives it."""

    def start(self) -> None:
        """Start it; OSError (or a subclass) when it cannot be started."""
        ...

    def read_into(self, inbox: Inbox) -> None:
        """Pass the run's progress messages on in order, then None once it has ended (on its own thread)."""
        ...

    def request_stop(self) -> None:
        """Finish the step, commit a checkpoint, end with `stopped` (pause, shutdown)."""
        ...

    def kill(self) -> None:
        """End it now; no checkpoint is needed (cancel, a lost claim)."""
        ...

    def wait(self) -> int:
        """Block until it has ended; its `ExitCode`."""
        ...

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of its log, for the operator."""
        ...


class Executor(Protocol):
    name: str

    def trainer(self, job_id: str, spec_path: Path) -> TrainerHandle:
        """A (not yet started) run of the job whose `job.json` is `spec_path`."""
        ...

    def has_room(self) -> bool:
        """Whether another job could start now (the worker's `max_jobs` aside)."""
        ...

    def close(self) -> None:
        """Release what the executor holds (a Ray connection); runs still going are the runner's business."""
        ...


def build_executor(name: str, *, ray_address: str | None = None) -> Executor:
    """The executor a worker runs its jobs with (`OPENFT_EXECUTOR`, `openft worker --executor`)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from openft.jobs.executors.ray_run import RayExecutor  # imports Ray: only for workers that use it

        return RayExecutor(ray_address)
    raise ValueError(f"unknown executor {name!r}: use 'local' or 'ray'")
