"""The Ray executor: each job attempt is one Ray Train run on a Ray cluster (docs/design.md §3.8).

`openft worker --executor ray --ray-address HOST:PORT` is a Ray driver. For each claimed job it starts a Ray Train
run (`DataParallelTrainer`, the base of `TorchTrainer`) with `compute.workers` Ray workers of one CPU and
`compute.gpus_per_worker` GPUs each; each worker runs one rank of the job (ray_rank.py), the same program as the
local launcher's ranks, so results at a world size are the same bit for bit with either executor. Everything
the worker does with a subprocess it does here through the run's channel actor (ray_channel.py): messages in
order, the stop byte, the kill, the exit codes. The ending is decided as the launcher decides it: rank 0's
`completed` or `stopped`; else a rank that died without a word; else the first `failed`.

Not `TorchTrainer` itself: it would form a torch process group in the Ray worker processes, through a TCP store
that listens on every interface; openft's ranks form their own (a FileStore in the job folder, gloo bound to
the node's address, NCCL across GPUs), exactly as on one machine.

**Failures.** A rank that dies without a word, a killed Ray worker or a lost node fail the worker group; Ray
Train restarts it (`FailureConfig(max_failures=MAX_GROUP_RESTARTS)`), and the new ranks resume from the job's
newest checkpoint (their `started` message reconciles the rows, jobs/reconcile.py). Past that many restarts the
attempt fails with `training_process_died`. A dead openft worker is openft's business as with any executor:
its lease expires, the run's driver is gone (Ray ends the run's actors with their owner), and another worker
claims the job again.

**Where the files are.** The ranks read `job.json` and write the job folder at the paths the worker wrote, so
every Ray node must mount the data folder at the same path (as several `openft worker` processes must).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from openft.jobs.executors.local import Inbox, log_tail
from openft.jobs.executors.ray_channel import RunChannel
from openft.jobs.executors.ray_rank import run_rank
from openft.trainer_contract import ExitCode, TrainJobSpec, checkpoint_dir, committed_checkpoint_steps

log = logging.getLogger(__name__)

MAX_GROUP_RESTARTS = 3
"""How many times Ray Train restarts a job's worker group (a worker, node or rank lost) within one attempt."""
POLL_SECONDS = 0.2
UNREACHABLE_WARNING_SECONDS = 60.0
"""A worker that cannot reach its Ray cluster says so at most this often (it asks every turn of its loop)."""
ENDINGS = ("completed", "stopped", "failed")
PEER_FIELD = "rank"
"""The field a rank other than 0 adds to its `failed` message (training/launcher.py's PeerProgress)."""

_connect_lock = threading.Lock()


def connect(address: str | None) -> None:
    """Join the Ray cluster as a driver, once per process (`auto`: the cluster this machine's `ray start` made)."""
    import ray

    with _connect_lock:
        if not ray.is_initialized():
            ray.init(
                address=address or "auto",
                namespace="openft",
                log_to_driver=False,  # the ranks' output goes to each job's train.log
                logging_level=logging.WARNING,
                configure_logging=False,
            )


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None):
        self.address = address
        self._runs: list[RayRun] = []
        self._last_warning = float("-inf")

    def trainer(self, job_id: str, spec_path: Path) -> RayRun:
        run = RayRun(job_id, spec_path, self.address)
        self._runs = [r for r in self._runs if not r.ended] + [run]
        return run

    def has_room(self) -> bool:
        """A CPU free on the cluster (and a GPU, where it has GPUs), and no run of ours still waiting to be
        placed (until Ray places it, what it will take still looks free)."""
        import ray

        try:
            connect(self.address)
            if any(not run.ended and not run.placed() for run in self._runs):
                return False
            free, total = ray.available_resources(), ray.cluster_resources()
        except Exception as exc:  # the cluster unreachable: claim nothing until it is back
            if time.monotonic() - self._last_warning > UNREACHABLE_WARNING_SECONDS:
                self._last_warning = time.monotonic()
                log.warning("the Ray cluster at %s cannot be asked for room: %s", self.address or "auto", exc)
            return False
        return free.get("CPU", 0) >= 1 and (total.get("GPU", 0) == 0 or free.get("GPU", 0) >= 1)

    def close(self) -> None:
        import ray

        with _connect_lock:
            if ray.is_initialized():
                ray.shutdown()


class RayRun:
    """One attempt as a Ray Train run; the runner drives it like a trainer subprocess (jobs/executors)."""

    def __init__(self, job_id: str, spec_path: Path, address: str | None):
        self.job_id = job_id
        self.spec_path = spec_path
        self.address = address
        self.log_path = spec_path.parent / "train.log"
        self.run_id = uuid.uuid4().hex[:8]
        self._channel: Any = None
        self._trainer: Any = None
        self._fit_thread: threading.Thread | None = None
        self._fit_error: BaseException | None = None
        self._ended = threading.Event()
        self._code = int(ExitCode.FAILED)
        self._stop_requested = False
        self._killed = False
        self._refusal: dict[str, Any] | None = None
        self._greeting = ""

    def start(self) -> None:
        spec = TrainJobSpec.read(self.spec_path)
        try:
            connect(self.address)
        except Exception as exc:  # ConnectionError, or Ray's own: the attempt fails with a clear message
            raise OSError(f"cannot reach the Ray cluster at {self.address or 'auto'}: {exc}") from exc
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig

        gpus = spec.gpus_per_worker
        if gpus is None:  # as on one machine: a GPU each where the cluster has GPUs
            gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
        resources: dict[str, float] = {"CPU": 1}
        if gpus:
            resources["GPU"] = gpus
        self._refusal = _beyond_cluster(spec.workers, resources, ray.cluster_resources())
        if self._refusal is not None:
            return
        each = " and ".join(f"{amount:g} {name}" for name, amount in resources.items())
        self._greeting = f"Submitted to the Ray cluster: {spec.workers} worker(s) with {each} each."
        self._channel = ray.remote(num_cpus=0)(RunChannel).remote()
        trainer_class = _abortable_trainer()
        self._trainer = trainer_class(
            run_rank,
            train_loop_config={
                "channel": self._channel,
                "job_file": str(self.spec_path),
                "run_id": self.run_id,
                "gpus_per_worker": gpus,
                "threads": max(1, (spec.num_threads or spec.workers) // spec.workers),
            },
            scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=gpus > 0, resources_per_worker=resources),
            run_config=RunConfig(
                name=f"openft-{self.job_id}-{self.run_id}",
                storage_path=str(self.spec_path.parent / "ray"),
                failure_config=FailureConfig(max_failures=MAX_GROUP_RESTARTS),
            ),
        )
        with open(self.log_path, "a", encoding="utf-8") as train_log:
            train_log.write(f"ray: run {self.run_id}: {spec.workers} worker(s), {gpus} GPU(s) each\n")
        self._fit_thread = threading.Thread(target=self._fit, name=f"ray-fit-{self.job_id}", daemon=True)
        self._fit_thread.start()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def placed(self) -> bool:
        """Whether Ray has started a rank of this run (its resources are then taken)."""
        import ray

        channel = self._channel
        if channel is None:  # not started, refused, or over
            return True
        try:
            return bool(ray.get(channel.entered.remote(), timeout=10))
        except Exception:  # the channel just ended with the run
            return True

    def _fit(self) -> None:
        try:
            self._trainer.fit()
        except BaseException as exc:  # Ray gave up (restarts spent), or the run was aborted
            self._fit_error = exc

    # the runner's side ----------------------------------------------------------------------------
    def read_into(self, inbox: Inbox) -> None:
        import ray

        ending = _Ending()
        try:
            if self._refusal is not None:
                inbox.put(self._refusal)
                return
            inbox.put({"type": "log", "level": "info", "message": self._greeting})
            while True:
                assert self._fit_thread is not None
                done = not self._fit_thread.is_alive()  # before the take: a line written before the end is in it
                lines, exits = ray.get(self._channel.take.remote())
                for generation, rank, text in lines:
                    message = ending.line(generation, rank, text)
                    if message is not None:
                        inbox.put(message)
                if done:
                    break
                if not lines:
                    time.sleep(POLL_SECONDS)
            final = ending.say(exits, self._fit_error, killed=self._killed)
            if final["type"] != "completed" and self._stop_requested and final["type"] != "stopped":
                final = self._stopped_at_newest_checkpoint()
            self._code = {"completed": ExitCode.COMPLETED, "stopped": ExitCode.STOPPED}.get(
                final["type"], ExitCode.FAILED
            )
            inbox.put(final)
        finally:
            inbox.put(None)
            self._ended.set()
            self._release()

    def _stopped_at_newest_checkpoint(self) -> dict[str, Any]:
        """Stopped before any rank could checkpoint (still waiting for the cluster): where the job already was."""
        spec = TrainJobSpec.read(self.spec_path)
        steps = committed_checkpoint_steps(spec.output_dir)
        newest = checkpoint_dir(spec.output_dir, steps[-1]) if steps else None
        return {"type": "stopped", "step": steps[-1] if steps else 0, "checkpoint": str(newest) if newest else None}

    def request_stop(self) -> None:
        self._stop_requested = True
        if self._channel is None:
            return
        import ray

        try:
            self._channel.stop.remote(int(signal.SIGUSR1))
            started = ray.get(self._channel.entered.remote(), timeout=10)
        except Exception:  # the channel is gone (its node lost): the run cannot be reached but through Ray
            started = False
        if not started:
            self._abort()  # no rank to checkpoint yet: don't wait for the cluster to find room

    def kill(self) -> None:
        self._killed = True
        if self._channel is not None:
            self._channel.kill.remote()
            self._abort()

    def _abort(self) -> None:
        controller = getattr(self._trainer, "controller", None)
        if controller is not None:
            controller.abort.remote()

    def wait(self) -> int:
        if self._fit_thread is not None:
            self._fit_thread.join()
        self._ended.wait()
        return self._code

    def _release(self) -> None:
        import ray

        if self._channel is not None:
            ray.kill(self._channel)
            self._channel = None

    def log_tail(self, lines: int = 3) -> str:
        return log_tail(self.log_path, lines)


class _Ending:
    """Rank 0's messages passed on at once (every group's); how the run ended decided from the last group."""

    def __init__(self) -> None:
        self.main_ending: dict[int, dict[str, Any]] = {}
        self.first_failure: dict[int, dict[str, Any]] = {}
        self.reported: dict[int, set[int]] = {}
        self.last_group = -1

    def line(self, generation: int, rank: int, text: str) -> dict[str, Any] | None:
        from openft.trainer_contract import parse_progress_line

        message = parse_progress_line(text)
        if message is None:
            return None
        message.pop(PEER_FIELD, None)
        self.last_group = max(self.last_group, generation)
        kind = message["type"]
        if kind == "failed":
            self.reported.setdefault(generation, set()).add(rank)
            self.first_failure.setdefault(generation, message)
            return None
        if kind in ENDINGS:
            if rank == 0:
                self.main_ending.setdefault(generation, message)
            return None
        return message if rank == 0 else None

    def say(
        self, exits: dict[tuple[int, int], int], fit_error: BaseException | None, *, killed: bool
    ) -> dict[str, Any]:
        group = max([self.last_group, *(g for g, _ in exits)])
        if group in self.main_ending:
            return self.main_ending[group]
        if fit_error is not None and not killed:
            text = str(fit_error).strip().splitlines()
            return _died(f"the Ray Train run failed after {MAX_GROUP_RESTARTS} restarts: {(text or [''])[0][:300]}")
        reported = self.reported.get(group, set())
        for (g, rank), code in sorted(exits.items()):
            if g == group and rank not in reported and code not in (ExitCode.COMPLETED, ExitCode.STOPPED):
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return _died(f"training process {rank} {how} without reporting why")
        if group in self.first_failure:
            return self.first_failure[group]
        return _died("the training processes ended without reporting how the run ended")


def _beyond_cluster(workers: int, each: dict[str, float], cluster: dict[str, float]) -> dict[str, Any] | None:
    """The `failed` message of a job the whole cluster could never hold (Ray would wait for it forever)."""
    for name, amount in each.items():
        if workers * amount > cluster.get(name, 0):
            message = (
                f"compute asks for {workers} workers with {amount:g} {name} each, but the Ray cluster has "
                f"{cluster.get(name, 0):g} {name} in all; use fewer workers"
                + (", or gpus_per_worker 0 to train on CPUs" if name == "GPU" else "")
            )
            return {"type": "failed", "code": "compute_unavailable", "message": message, "param": "compute"}
    return None


def _died(what: str) -> dict[str, Any]:
    message = f"{what}; the operator can see why in the job's train.log."
    return {"type": "failed", "code": "training_process_died", "message": message, "param": None}


def _abortable_trainer() -> type:
    """`DataParallelTrainer` that keeps its controller's handle, so that a cancel can abort the run.

    Ray 2.60 wires the controller's `abort` only to Ctrl-C in the driver's main thread; this is its
    `_initialize_and_run_controller` with the handle kept (Ray is pinned in constraints.txt; a Ray upgrade must
    check this method against Ray's own).
    """
    import ray
    from ray.train.v2.api import data_parallel_trainer as base

    class AbortableTrainer(base.DataParallelTrainer):
        controller: Any = None

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
            env_vars = base.get_env_vars_to_propagate()
            env_vars.setdefault(
                base.RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, base.DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE
            )
            controller_class = ray.remote(
                num_cpus=0,
                label_selector={getattr(ray._raylet, "RAY_NODE_ID_KEY"): ray.get_runtime_context().get_node_id()},  # noqa: B009
                runtime_env={"env_vars": env_vars},
            )(base.TrainController)
            self.controller = controller_class.remote(**controller_init_kwargs)
            ray.get(self.controller.run.remote())
            return ray.get(self.controller.get_result.remote())

    return AbortableTrainer
