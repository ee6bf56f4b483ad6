"""Several trainer processes for one job (`compute.workers` > 1): the launcher `openft train job.json` becomes.

The launcher starts N copies of the trainer on this machine (`python -m openft.training.entrypoint
job.json`, ranks 0..N-1; `distributed.py` is their side) and stands between them and the worker, which
still sees one process with one stdout, one exit code and one pid to signal or kill (docs/design.md §3.7):

- **Messages.** Every rank's stdout is one pipe to the launcher. Only rank 0 writes progress messages; the
  launcher passes them on as they come and keeps back how the run ended, which it says once all ranks are
  gone: rank 0's `completed` or `stopped`; else the first `failed` any rank wrote (a rank that crashes
  writes its `failed` before it exits, and its peers notice only once it has exited, so the first is the
  cause); else a `failed` of its own for a rank that died without a word. Its exit code follows from it.
- **Stop.** SIGUSR1, SIGTERM or SIGINT (or the worker that started the launcher gone) becomes one byte per
  rank on the ranks' stdin, a pipe only the launcher writes. Whichever rank reads it, the ranks agree at the
  next step boundary (`distributed.Ranks.agree_to_stop`) and all stop after the same step.
- **Kill.** When the launcher dies, however it dies, that pipe reaches end-of-file and every rank exits at
  once (`watch_launcher`): a killed job leaves no rank behind. A rank whose parent changed exits likewise.
- **Crash.** Once one rank exits with an error the others get `FAIL_GRACE_SECONDS` to end (with gloo they
  see the lost peer at their next collective), then they are killed.
- **Loopback only.** The ranks meet through a `FileStore` in a private temporary folder (no listening
  socket at all); gloo and NCCL use the loopback interface only (`distributed.py`).

Why not torchrun (`python -m torch.distributed.run --standalone`), which does the same on one machine: on
torch 2.13 its rendezvous store listens on every network interface (`*:port`, also with `--rdzv-endpoint
127.0.0.1:0` or `--master-addr 127.0.0.1`; the c10d rendezvous keeps pickled state in it), its agent dies of
SIGUSR1 (the worker's stop signal) and turns SIGTERM into "kill the ranks after 30 s", and it counts a rank's
orderly stop (exit 3) as a failure. The ranks get torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE) all the same.

Nothing here imports torch: the launcher only starts, relays and signals.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from openft.trainer_contract import ExitCode, RankEnv, TrainJobSpec, parse_progress_line
from openft.training.progress import ProgressChannel
from openft.training.stop import WORKER_GONE, StopRequest

POLL_SECONDS = 0.2
FAIL_GRACE_SECONDS = 30.0
"""How long the other ranks may take to end after one exited with an error, before they are killed."""
LAUNCHER_GONE_EXIT = 137
"""A rank's exit status when its launcher is gone: that of a process killed by SIGKILL, which is what happened
to the job."""
PEER_FIELD = "rank"
"""A rank other than 0 writes only `failed` messages, with this field added so the launcher knows whose it is."""
ENDINGS = ("completed", "stopped", "failed")


def usable_cpus() -> int:
    """CPUs this process may run on (`jobs.job_file.usable_cpus`; training may not import jobs)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class PeerProgress(ProgressChannel):
    """The channel of a rank other than 0. Its messages would repeat rank 0's, so only its `failed` goes to the
    launcher (tagged with the rank: `_Ending` keeps the first failure); its `log` lines go to train.log only."""

    def __init__(self, channel: ProgressChannel, rank: int):
        self._channel = channel
        self._rank = rank

    def emit(self, kind: Any, /, **fields: Any) -> None:
        if kind == "failed":
            self._channel.emit(kind, **fields, **{PEER_FIELD: self._rank})


# The launcher --------------------------------------------------------------------------------------


class _Ending:
    """Rank 0's messages passed on at once; how the run ended said once every rank has exited (`say`)."""

    def __init__(self, progress: ProgressChannel):
        self.progress = progress
        self.main_ending: dict[str, Any] | None = None
        """Rank 0's `completed` or `stopped`."""
        self.first_failure: dict[str, Any] | None = None
        self.reported: set[int] = set()
        """Ranks that wrote a `failed` message."""

    def line(self, text: str) -> None:
        message = parse_progress_line(text)
        if message is None:
            if text.strip():
                print(text, file=sys.stderr, flush=True)  # stray output belongs in train.log
            return
        rank = message.pop(PEER_FIELD, 0)
        kind = message.pop("type")
        if kind == "failed":
            self.reported.add(rank)
            self.first_failure = self.first_failure or {"type": kind, **message}
        elif kind in ENDINGS:
            if rank == 0:
                self.main_ending = self.main_ending or {"type": kind, **message}
        elif rank == 0:
            self.progress.emit(kind, **message)

    def say(self, ranks: list[subprocess.Popen[bytes]], killed: set[int]) -> int:
        """Rank 0's `completed`/`stopped`; else a rank that died without a word (the others' failures follow
        from losing it; ranks the launcher killed itself do not count); else the first `failed`."""
        ending = self.main_ending or _silent_death(ranks, self.reported | killed) or self.first_failure
        if ending is None:  # every rank exited 0 or 3 without saying how the run ended (not expected)
            ending = _died("the training processes ended without reporting how the run ended")
        kind = ending.pop("type")
        self.progress.emit(kind, **ending)
        return {"completed": ExitCode.COMPLETED, "stopped": ExitCode.STOPPED}.get(kind, ExitCode.FAILED)


def _silent_death(ranks: list[subprocess.Popen[bytes]], excused: set[int]) -> dict[str, Any] | None:
    for rank, process in enumerate(ranks):
        code = process.returncode
        if rank not in excused and code is not None and code not in (0, ExitCode.STOPPED):
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return _died(f"training process {rank} of {len(ranks)} {how} without reporting why")
    return None


def _died(what: str) -> dict[str, Any]:
    message = f"{what}; the operator can see why in the job's train.log."
    return {"type": "failed", "code": "training_process_died", "message": message, "param": None}


def _stop_byte(reason: str | None) -> int:
    """A stop reason as one control byte: the signal's number, or 0 for the worker gone."""
    try:
        return int(signal.Signals[reason or ""])
    except KeyError:
        return 0


def _send_stop(control: int, reason: str | None, n: int) -> None:
    with contextlib.suppress(OSError):  # every rank may be gone already
        os.write(control, bytes([_stop_byte(reason)]) * n)


def launch(job_file: Path, spec: TrainJobSpec, progress: ProgressChannel, stop: StopRequest) -> int:
    """Run the job as `spec.workers` ranks; return the exit code of how they ended (see the module docstring)."""
    threads = max(1, (spec.num_threads or usable_cpus()) // spec.workers)
    rendezvous = Path(tempfile.mkdtemp(prefix="openft-ranks-"))  # mode 0700: this user's ranks only
    control_read, control = os.pipe()
    out, out_write = os.pipe()
    ranks: list[subprocess.Popen[bytes]] = []
    killed: set[int] = set()
    ending = _Ending(progress)
    try:
        for rank in range(spec.workers):
            env = RankEnv(rank, spec.workers, rendezvous / "store", spec.gpus_per_worker, threads)
            ranks.append(
                subprocess.Popen(
                    [sys.executable, "-m", "openft.training.entrypoint", str(job_file)],
                    stdin=control_read,
                    stdout=out_write,
                    env={**os.environ, **env.variables()},
                )
            )
            print(f"training process {rank} of {spec.workers}: pid {ranks[-1].pid}", file=sys.stderr, flush=True)
        os.close(control_read)
        os.close(out_write)
        control_read = out_write = -1
        _follow(ranks, out, control, stop, ending, killed)
    finally:
        for rank, process in enumerate(ranks):
            if process.poll() is None:  # only when the launcher itself failed: no rank outlives it
                killed.add(rank)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            process.wait()
        for fd in (control_read, control, out, out_write):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        shutil.rmtree(rendezvous, ignore_errors=True)
    return ending.say(ranks, killed)


def _follow(
    ranks: list[subprocess.Popen[bytes]], out: int, control: int, stop: StopRequest, ending: _Ending, killed: set[int]
) -> None:
    """Relay the ranks' output until every rank has closed it; pass a stop on; end stragglers after a crash."""
    pending = b""
    stop_sent = gave_up = False
    failed_at: float | None = None
    with selectors.DefaultSelector() as selector:
        selector.register(out, selectors.EVENT_READ)
        while True:
            if not stop_sent and stop.requested:
                stop_sent = True
                _send_stop(control, stop.signal_name, len(ranks))
            if failed_at is None and any(p.poll() not in (None, 0, ExitCode.STOPPED) for p in ranks):
                failed_at = time.monotonic()
            if not gave_up and failed_at is not None and time.monotonic() - failed_at > FAIL_GRACE_SECONDS:
                gave_up = True
                for rank, process in enumerate(ranks):
                    if process.poll() is None:
                        print(f"killing training process {rank} (pid {process.pid}): a peer failed", file=sys.stderr)
                        killed.add(rank)
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()
            if not selector.select(POLL_SECONDS):
                continue
            chunk = os.read(out, 1 << 16)
            if not chunk:
                break  # every rank has closed its stdout: they are gone
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                ending.line(line.decode("utf-8", errors="replace"))
    if pending:
        ending.line(pending.decode("utf-8", errors="replace"))
    for process in ranks:
        process.wait()


# The rank's side of the control pipe ------------------------------------------------------------------


def watch_launcher(stop: StopRequest) -> None:
    """In a rank: turn control bytes on stdin into stop requests, and exit at once when the launcher is gone.

    A thread, so it also acts while the main thread is inside a long step or a collective: a rank whose
    launcher was killed must not go on training (or hold a GPU) with no one to report to.
    """
    launcher = os.getppid()

    def watch() -> None:
        while True:
            ready, _, _ = select.select([0], [], [], POLL_SECONDS)
            if os.getppid() != launcher:
                os._exit(LAUNCHER_GONE_EXIT)
            if not ready:
                continue
            data = os.read(0, 64)
            if not data:
                os._exit(LAUNCHER_GONE_EXIT)
            if not stop.requested:
                code = data[0]
                stop.request(signal.Signals(code).name if code else WORKER_GONE)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
