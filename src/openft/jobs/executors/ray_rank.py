"""What each Ray Train worker of a job runs: one rank of the job, as a child process (docs/design.md §3.8).

The rank is the same program the launcher starts on one machine (`python -m openft.training.entrypoint
job.json` with a rank's environment, openft.trainer_contract.RankEnv), so the recipe, its exactness and its
checkpoints do not depend on the executor. This function stands where the launcher stands for its ranks: it
owns the rank's stdin (the stop byte; end-of-file when this Ray worker dies, however it dies, and the rank
exits at once) and relays its stdout to the run's channel (ray_channel.py).

Ray decides what a failure is from how this function ends: it returns when the rank completed, stopped, or
failed *and said why* (a job's failure, which trying again would repeat); it raises when the rank died without
a word (killed, out of memory by the kernel, its machine lost), and Ray Train then restarts the worker group,
whose ranks resume from the job's newest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from openft.trainer_contract import ExitCode, RankEnv, parse_progress_line

CONTROL_POLL_SECONDS = 0.25
RANKS_DIR = ".ranks"
"""Under the job folder: one rendezvous folder per group of ranks (removed by rank 0 when its group ends)."""


class RankDied(RuntimeError):
    """A rank's process ended without saying why: Ray Train counts it as a worker failure."""


def run_rank(config: dict[str, Any]) -> None:
    """The Ray Train worker function (`train_loop_per_worker`); `config` comes from ray_run.RayRun."""
    import ray
    import ray.train

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    channel = config["channel"]
    generation = ray.get(channel.enter.remote(rank))
    job_file = Path(config["job_file"])
    rendezvous = job_file.parent / RANKS_DIR / f"{config['run_id']}-{generation}"
    rendezvous.mkdir(parents=True, exist_ok=True)
    env = RankEnv(
        rank,
        world_size,
        rendezvous / "store",
        config["gpus_per_worker"],
        config["threads"],
        locks_folder=True,
        host=_node_address(),
        gpu_slot=0,  # Ray makes only this worker's GPUs visible to it
    )
    with open(job_file.parent / "train.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "openft.training.entrypoint", str(job_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **env.variables(), "TOKENIZERS_PARALLELISM": "false"},
        )
        where = f"training process {rank} of {world_size} (group {generation}) on {env.host}"
        log.write(f"ray: {where}: pid {process.pid}\n".encode())
    relay = _Relay(process, channel, generation, rank)
    relay.start()
    killed = _follow(process, channel, generation, rank)
    code = process.wait()
    relay.join()
    ray.get(channel.exited.remote(generation, rank, code))
    if rank == 0:
        shutil.rmtree(rendezvous, ignore_errors=True)
    if code in (ExitCode.COMPLETED, ExitCode.STOPPED) or relay.said_why or killed:
        return
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    raise RankDied(f"training process {rank} of {world_size} {how} without reporting why")


def _node_address() -> str:
    """The address Ray knows this worker's node by (what its peers on other nodes can reach). Not
    `ray.util.get_node_ip_address()`: in a worker process that guesses from a route to the internet, and on a
    machine without one it says 127.0.0.1."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
            return str(node["NodeManagerAddress"])
    return str(ray.util.get_node_ip_address())


def _follow(process: subprocess.Popen[bytes], channel: Any, generation: int, rank: int) -> bool:
    """Pass the driver's stop on (one byte, as the launcher does) and kill the rank when told; True if killed."""
    import ray

    stop_sent = killed = False
    assert process.stdin is not None
    while process.poll() is None:
        try:
            stop, kill = ray.get(channel.control.remote(generation, rank), timeout=30)
        except ray.exceptions.GetTimeoutError:
            continue
        except ray.exceptions.RayActorError:  # the driver is gone: like the launcher's parent gone
            stop, kill = 0, False
        if stop is not None and not stop_sent:
            stop_sent = True
            with contextlib.suppress(OSError):
                process.stdin.write(bytes([stop]))
                process.stdin.flush()
        if kill and not killed:
            killed = True
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        time.sleep(CONTROL_POLL_SECONDS)
    return killed


class _Relay(threading.Thread):
    """The rank's stdout, line by line, to the channel; notes whether the rank said why it failed."""

    def __init__(self, process: subprocess.Popen[bytes], channel: Any, generation: int, rank: int):
        super().__init__(name=f"relay-{rank}", daemon=True)
        self._process, self._channel, self._generation, self._rank = process, channel, generation, rank
        self.said_why = False

    def run(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            message = parse_progress_line(line)
            if message is None:
                continue  # stray output: a rank's prints are not the driver's business (its stderr is train.log)
            if message.get("type") == "failed":
                self.said_why = True
            self._channel.put.remote(self._generation, self._rank, [line])  # in order: one caller, one actor
