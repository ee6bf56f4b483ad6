"""`openft train job.json`: run one training job in this process and end with an `ExitCode`.

Whatever happens, the worker gets a last message that says how it ended (`completed`, `stopped` or
`failed` with a stable code), never a bare traceback: tracebacks go to stderr, for the log. A failure's
message is shown to the job's owner, so it names no server path (`openft.redact`); the full text goes to
stderr (train.log) for the operator.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from openft.redact import redact_paths
from openft.trainer_contract import (
    PARENT_PID_ENV,
    ExitCode,
    RankEnv,
    TrainJobSpec,
    checkpoint_dir,
    committed_checkpoint_steps,
)
from openft.training.folder_lock import FolderLock
from openft.training.launcher import PeerProgress, launch, watch_launcher
from openft.training.progress import ProgressChannel
from openft.training.stop import StopRequest

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
MAX_MESSAGE = 2000


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _fail(progress: ProgressChannel, code: str, message: str, param: str | None) -> int:
    """The `failed` message: the full text to stderr (train.log), the owner's copy without server paths."""
    print(f"failed ({code}): {message}", file=sys.stderr, flush=True)
    progress.emit("failed", code=code, message=redact_paths(message)[:MAX_MESSAGE], param=param)
    return ExitCode.FAILED


def run(job_file: Path, *, progress: ProgressChannel | None = None) -> int:
    """Train as `job_file` says; `progress` defaults to taking over this process's stdout.

    Three roles, one command: a job with one worker trains here; with `compute.workers` > 1 this process is the
    launcher of that many ranks (`launcher.py`), which are this same command run with a rank's environment.
    """
    progress = progress or ProgressChannel.take_stdout()
    rank = RankEnv.from_environment()
    if rank is not None and not rank.is_main:
        progress = PeerProgress(progress, rank.rank)
    try:
        spec = TrainJobSpec.read(job_file)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        _fail(progress, "invalid_job_file", f"cannot read the job file {job_file}: {exc}", None)
        return ExitCode.USAGE
    if spec.workers == 1 and spec.gpus_per_worker == 0:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # asked for the CPU: before torch looks for a GPU

    # Handlers go in before the slow imports, so an early SIGTERM still ends in an orderly `stopped`.
    parent = os.environ.get(PARENT_PID_ENV, "")
    # A rank's parent is the launcher, which watches the worker itself: a rank watches the launcher instead.
    stop = StopRequest(parent_pid=int(parent) if parent.isdigit() and rank is None else None)
    previous: dict[int, Any] = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    if rank is not None:
        watch_launcher(stop)  # the launcher printed this process's pid and rank into train.log
        # Without a launcher (the Ray executor) rank 0 holds the folder for the job; its peers touch nothing
        # in it before they have joined rank 0's group, which happens only once rank 0 holds the lock.
        lock = FolderLock(Path(spec.output_dir)) if rank.locks_folder and rank.is_main else None
        try:
            if lock is not None and not lock.acquire(lambda: stop.requested, functools.partial(progress.log, "info")):
                return _stopped_before_start(spec, progress)
            return _train(spec, progress, stop, rank)
        finally:
            if lock is not None:
                lock.release()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    # The worker holds stop signals back until it has heard from us: until now SIGUSR1 would have killed us.
    progress.emit("log", level="info", message="Training process started.")  # its pid is the operator's business
    print(f"training process {os.getpid()} started", file=sys.stderr, flush=True)
    # Nothing in the job folder is touched before this: a trainer left behind by a dead worker may still be
    # finishing its step and last checkpoint there (see folder_lock.py). The launcher holds it for its ranks.
    lock = FolderLock(Path(spec.output_dir))
    if not lock.acquire(lambda: stop.requested, functools.partial(progress.log, "info")):
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return _stopped_before_start(spec, progress)
    try:
        if spec.wandb is not None:  # mirror the messages into a W&B run (never raises; see tracking.py)
            from openft.training.tracking import TrackedProgressChannel

            progress = TrackedProgressChannel.start(progress, spec)
        if spec.workers > 1:
            return launch(job_file, spec, progress, stop)
        return _train(spec, progress, stop, None)
    finally:
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_before_start(spec: TrainJobSpec, progress: ProgressChannel) -> int:
    """Asked to stop while waiting for the folder: stopped where the job's newest checkpoint is."""
    steps = committed_checkpoint_steps(spec.output_dir)
    newest = checkpoint_dir(spec.output_dir, steps[-1]) if steps else None
    progress.emit("stopped", step=steps[-1] if steps else 0, checkpoint=str(newest) if newest else None)
    return ExitCode.STOPPED


def _train(spec: TrainJobSpec, progress: ProgressChannel, stop: StopRequest, rank: RankEnv | None) -> int:
    """Run the recipe (as one of the job's ranks when `rank` is set) and turn how it ended into an exit code."""
    from openft.basemodels import BaseModelUnavailable
    from openft.training.distributed import ComputeUnavailable
    from openft.training.faults import hooks_from_environment
    from openft.training.quantization import QuantizationUnavailable
    from openft.training.recipe import TrainingFailure, run_recipe

    try:
        with _joined(rank, progress):
            if rank is not None:  # the job's threads (or this machine's CPUs) shared among the ranks
                spec = spec.model_copy(update={"num_threads": rank.threads})
            try:
                outcome = run_recipe(spec, progress, stop, hooks_from_environment())
            except TrainingFailure as failure:
                return _fail(progress, failure.code, failure.message, failure.param)
            except BaseModelUnavailable as exc:
                return _fail(progress, "model_not_found", f"the base model is not available: {exc}", "model")
            except QuantizationUnavailable as exc:  # QLoRA where bitsandbytes cannot run
                return _fail(progress, exc.code, str(exc), f"method.{spec.method}.hyperparameters.fine_tuning_mode")
            return ExitCode.STOPPED if outcome == "stopped" else ExitCode.COMPLETED
    except ComputeUnavailable as exc:
        return _fail(progress, "compute_unavailable", str(exc), "compute")
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        if _is_out_of_memory(exc):
            message = f"out of memory: {exc}; try a smaller batch_size, micro_batch_size or max_seq_len"
            return _fail(progress, "out_of_memory", message, None)
        return _fail(progress, "training_error", f"{type(exc).__name__}: {exc}", None)


@contextlib.contextmanager
def _joined(rank: RankEnv | None, progress: ProgressChannel) -> Iterator[None]:
    """As a rank: in the job's process group for the duration (distributed.py); else nothing to do."""
    if rank is None:
        yield
        return
    from openft.training import distributed

    ranks = distributed.join(rank)
    where = f"GPU {ranks.device.index}, NCCL" if ranks.device.type == "cuda" else "CPU, gloo"
    if rank.is_main:  # the others would say the same (but for their GPU's number)
        threads = f"{rank.threads} thread(s) each"
        progress.log("info", f"Training with {rank.world_size} worker processes (rank 0: {where}; {threads})")
    try:
        yield
    finally:
        distributed.leave()


if __name__ == "__main__":  # `python -m openft.training.entrypoint job.json`, same as `openft train job.json`
    if len(sys.argv) != 2:
        print("usage: python -m openft.training.entrypoint JOB_JSON", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    code = run(Path(sys.argv[1]))
    if RankEnv.from_environment() is not None:
        # A rank has committed or fsynced all it wrote; the interpreter's own teardown after a distributed run
        # takes seconds (native destructors) and the launcher waits for every rank before it says how the job ended.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
