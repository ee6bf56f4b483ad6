"""`openft train job.json`: run one training job in this process and end with an `ExitCode`.

Whatever happens, the worker gets a last message that says how it ended (`completed`, `stopped` or
`failed` with a stable code), never a bare traceback: tracebacks go to stderr, for the log. A failure's
message is shown to the job's owner, so it names no server path (`openft.redact`); the full text goes to
stderr (train.log) for the operator.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from openft.redact import redact_paths
from openft.trainer_contract import PARENT_PID_ENV, ExitCode, TrainJobSpec, checkpoint_dir, committed_checkpoint_steps
from openft.training.folder_lock import FolderLock
from openft.training.progress import ProgressChannel

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
    """Train as `job_file` says; `progress` defaults to taking over this process's stdout."""
    progress = progress or ProgressChannel.take_stdout()
    try:
        spec = TrainJobSpec.read(job_file)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        _fail(progress, "invalid_job_file", f"cannot read the job file {job_file}: {exc}", None)
        return ExitCode.USAGE

    # Handlers go in before the slow imports, so an early SIGTERM still ends in an orderly `stopped`.
    from openft.training.recipe import StopRequest

    parent = os.environ.get(PARENT_PID_ENV, "")
    stop = StopRequest(parent_pid=int(parent) if parent.isdigit() else None)
    previous: dict[int, Any] = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    # The worker holds stop signals back until it has heard from us: until now SIGUSR1 would have killed us.
    progress.emit("log", level="info", message="Training process started.")  # its pid is the operator's business
    print(f"training process {os.getpid()} started", file=sys.stderr, flush=True)
    # Nothing in the job folder is touched before this: a trainer left behind by a dead worker may still be
    # finishing its step and last checkpoint there (see folder_lock.py).
    lock = FolderLock(Path(spec.output_dir))
    if not lock.acquire(lambda: stop.requested, functools.partial(progress.log, "info")):
        steps = committed_checkpoint_steps(spec.output_dir)
        newest = checkpoint_dir(spec.output_dir, steps[-1]) if steps else None
        progress.emit("stopped", step=steps[-1] if steps else 0, checkpoint=str(newest) if newest else None)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        return ExitCode.STOPPED
    try:
        if spec.wandb is not None:  # mirror the messages into a W&B run (never raises; see tracking.py)
            from openft.training.tracking import TrackedProgressChannel

            progress = TrackedProgressChannel.start(progress, spec)
        from openft.basemodels import BaseModelUnavailable
        from openft.training.faults import hooks_from_environment
        from openft.training.quantization import QuantizationUnavailable
        from openft.training.recipe import TrainingFailure, run_recipe

        try:
            outcome = run_recipe(spec, progress, stop, hooks_from_environment())
        except TrainingFailure as failure:
            return _fail(progress, failure.code, failure.message, failure.param)
        except BaseModelUnavailable as exc:
            return _fail(progress, "model_not_found", f"the base model is not available: {exc}", "model")
        except QuantizationUnavailable as exc:  # QLoRA where bitsandbytes cannot run
            return _fail(progress, exc.code, str(exc), f"method.{spec.method}.hyperparameters.fine_tuning_mode")
        return ExitCode.STOPPED if outcome == "stopped" else ExitCode.COMPLETED
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        if _is_out_of_memory(exc):
            message = f"out of memory: {exc}; try a smaller batch_size, micro_batch_size or max_seq_len"
            return _fail(progress, "out_of_memory", message, None)
        return _fail(progress, "training_error", f"{type(exc).__name__}: {exc}", None)
    finally:
        lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # `python -m openft.training.entrypoint job.json`, same as `openft train job.json`
    if len(sys.argv) != 2:
        print("usage: python -m openft.training.entrypoint JOB_JSON", file=sys.stderr)
        sys.exit(ExitCode.USAGE)
    sys.exit(run(Path(sys.argv[1])))
