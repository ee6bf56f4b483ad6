"""Several trainer processes per job (`compute.workers`): two gloo ranks on the CPU, under the real launcher.

Each scenario runs `python -m openft.training.entrypoint job.json` exactly as the worker does; with `workers: 2`
it becomes the launcher of two ranks (training/launcher.py, training/distributed.py). Stops and kills land at
chosen steps through OPENFT_TRAIN_DEBUG_SIGNALS (every rank fires its own; `:parent` aims at the launcher).

Covered: a 2-worker LoRA job (dropout on: per-rank RNG states) paused and resumed, and one whose launcher is
killed with SIGKILL and then resumed, end bit-identical to a straight 2-worker job; no rank outlives a killed
launcher; a rank killed mid-run fails the job at once, naming that rank; the ranks listen on loopback only;
2 workers give 1 worker's losses to float tolerance (same global batch), for LoRA (explicit gradient sum) and
for full fine-tuning (FSDP2 on gloo); a 2-worker checkpoint refuses to resume with 1 worker.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import ExitCode, RankEnv, checkpoint_dir, parse_progress_line
from openft.training import checkpoint as ckpt
from openft.training.launcher import PEER_FIELD, _Ending
from openft.training.progress import ProgressChannel
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
    job_spec,
    load_tensors,
    results_rows,
    run_in_process,
    run_subprocess,
    train_losses,
    write_job,
)

pytestmark = pytest.mark.slow

TOTAL_STEPS = 6  # 12 examples, batch 4, 2 epochs (job_spec)
TWO = {"workers": 2, "num_threads": 2}  # one torch thread per rank
UNEVEN = {"hyperparameters": {"n_epochs": 2, "batch_size": 3, "learning_rate_multiplier": 2.0}}
"""Batches of 3 over 2 ranks: rank 0 trains 2 items of each, rank 1 one."""
NO_DROPOUT = {"lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}, **UNEVEN}
FULL = {"lora": None, "base_learning_rate": 1e-3, "micro_batch_size": 1, **UNEVEN}
"""Micro-batches of 1: FSDP2 accumulates without reducing but for the last, and rank 1 runs a filler pass."""
RANK_PID = re.compile(r"training process (\d+) of \d+: pid (\d+)")


class Scenarios:
    def __init__(self, tmp: Path, model_dir: Path, data: dict[str, Path]):
        self.tmp, self.model_dir, self.data = tmp, model_dir, data
        self.runs: dict[str, list[TrainerRun]] = {}
        self.outputs: dict[str, Path] = {}
        self.leftover_ranks: list[int] = []
        self.peer_kill: dict[str, Any] = {}

    def job(self, name: str, **overrides: Any) -> Path:
        spec = job_spec(self.tmp, self.model_dir, self.data, name=name, **overrides)
        self.outputs[name] = Path(spec["output_dir"])
        return write_job(self.tmp / f"{name}-{len(self.runs.get(name, []))}.json", spec)

    def chain(self, name: str, legs: list[tuple[str, dict[str, Any]]]) -> None:
        self.runs[name] = []
        for debug_signals, overrides in legs:
            run = run_subprocess(self.job(name, **overrides), debug_signals=debug_signals, timeout=240)
            self.runs[name].append(run)
            if debug_signals.endswith(":parent"):  # the launcher was killed: every rank must be gone by now
                self.leftover_ranks += [pid for pid in _rank_pids(run.stderr) if _alive(pid)]

    def one_process(self, name: str, **overrides: Any) -> None:
        self.runs[name] = [run_in_process(self.job(name, **overrides))]

    def run_all(self) -> None:
        chains: dict[str, Callable[[], None]] = {
            "straight": lambda: self.chain("straight", [("", TWO)]),
            "paused": lambda: self.chain("paused", [("2:SIGUSR1", TWO), ("", TWO)]),
            # The launcher SIGKILLed one step after the first epoch checkpoint (each rank aims at its parent).
            "killed": lambda: self.chain("killed", [("4:SIGKILL:parent", TWO), ("", TWO)]),
            "lora_two": lambda: self.chain("lora_two", [("", {**TWO, **NO_DROPOUT})]),
            "full_two": lambda: self.chain("full_two", [("", {**TWO, **FULL})]),
            "peer_killed": self.kill_a_peer,
            "worker_killed": self.kill_the_worker,
        }
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(run) for run in chains.values()]:
                future.result()
        self.one_process("lora_one", **NO_DROPOUT)
        self.one_process("full_one", **FULL)

    def kill_a_peer(self) -> None:
        """Rank 1 killed (kill -9) after step 1: the job must fail at once, naming it; and while it ran, every
        socket the ranks listened on was on 127.0.0.1."""
        job = self.job("peer_killed", **TWO)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFT_TRAIN_DEBUG_SIGNALS": ""}
        command = [sys.executable, "-m", "openft.training.entrypoint", str(job)]
        launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(launcher.stderr or []), daemon=True)
        reader.start()
        messages = []
        assert launcher.stdout is not None
        for line in launcher.stdout:
            message = parse_progress_line(line)
            if message is None:
                continue
            messages.append(message)
            if message["type"] == "metrics" and "killed_at" not in self.peer_kill:
                pids = _rank_pids("".join(stderr))
                self.peer_kill["listening"] = {pid: _listening(pid) for pid in pids}
                os.kill(pids[1], signal.SIGKILL)
                self.peer_kill["killed_at"] = time.monotonic()
        launcher.wait(timeout=120)
        self.peer_kill["ended_after"] = time.monotonic() - self.peer_kill["killed_at"]
        reader.join(timeout=10)
        self.runs["peer_killed"] = [TrainerRun(launcher.returncode, messages, "", "".join(stderr))]

    def kill_the_worker(self) -> None:
        """The process that started the launcher (the worker) killed after step 1: the launcher has the ranks stop
        at the next step boundary with a checkpoint, as a lone trainer does, and all of them exit."""
        job = self.job(
            "worker_killed", **TWO, hyperparameters={"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 1.0}
        )
        worker = (
            "import os, subprocess, sys; os.environ['OPENFT_TRAIN_PARENT_PID'] = str(os.getpid()); "
            "subprocess.run([sys.executable, '-m', 'openft.training.entrypoint', sys.argv[1]])"
        )
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFT_TRAIN_DEBUG_SIGNALS": ""}
        command = [sys.executable, "-c", worker, str(job)]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(process.stderr or []), daemon=True)
        reader.start()
        messages = []
        assert process.stdout is not None
        for line in process.stdout:  # the launcher and the ranks keep the pipe open until they exit
            message = parse_progress_line(line)
            if message is not None:
                messages.append(message)
                if message["type"] == "metrics" and message["step"] == 1:
                    process.kill()
        process.wait()
        reader.join(timeout=10)
        text = "".join(stderr)
        self.leftover_ranks += [pid for pid in _rank_pids(text) if _alive(pid)]
        self.runs["worker_killed"] = [TrainerRun(-9, messages, "", text)]


def _rank_pids(stderr: str) -> list[int]:
    found: dict[int, int] = {}
    for rank, pid in RANK_PID.findall(stderr):
        found[int(rank)] = int(pid)
    return [found[rank] for rank in sorted(found)]


def _alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its reaper counts as gone); waits a moment for the kernel."""
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return False
        if state == "Z":
            return False
        time.sleep(0.1)
    return True


def _listening(pid: int) -> list[str]:
    """The local addresses (hex, as in /proc/net/tcp*) of the TCP sockets `pid` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.append(fields[1].split(":")[0])
    return addresses


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, data_files: dict[str, Path]) -> Scenarios:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    found = Scenarios(tmp_path_factory.mktemp("distributed"), tiny_model_dir, data_files)
    found.run_all()
    return found


def _completed(run: TrainerRun) -> None:
    assert run.rc == ExitCode.COMPLETED, run.stderr[-4000:]
    assert run.last["type"] == "completed" and run.stray_lines == []


def _assert_identical(scenarios: Scenarios, name: str, straight: str = "straight") -> None:
    reference, resumed = scenarios.outputs[straight], scenarios.outputs[name]
    _completed(scenarios.runs[name][-1])
    assert train_losses(resumed) == train_losses(reference)
    assert results_rows(resumed) == results_rows(reference)  # every metric, validation included: bit for bit
    assert_same_tensors(reference / "model", resumed / "model")


def _assert_close(two: Path, one: Path) -> None:
    losses_two, losses_one = train_losses(two), train_losses(one)
    assert list(losses_two) == list(losses_one) == list(range(1, 9))  # 12 examples in batches of 3, 2 epochs
    for step, loss in losses_one.items():
        assert math.isclose(losses_two[step], loss, rel_tol=1e-5), (step, losses_two[step], loss)
    weights_two, weights_one = load_tensors(two / "model"), load_tensors(one / "model")
    assert weights_two.keys() == weights_one.keys()
    for key, tensor in weights_one.items():
        assert (weights_two[key] - tensor).abs().max().item() < 1e-4, key


# A straight 2-worker run ------------------------------------------------------------------------------


def test_a_two_worker_run_reads_like_a_one_worker_run(scenarios: Scenarios) -> None:
    run, out = scenarios.runs["straight"][0], scenarios.outputs["straight"]
    _completed(run)
    kinds = [m["type"] for m in run.messages if m["type"] != "log"]
    assert kinds.count("started") == 1 and kinds[-1] == "completed"  # rank 1 said nothing of its own
    assert [m["step"] for m in run.of("metrics")] == list(range(1, TOTAL_STEPS + 1))
    assert [(c["step"], c["kind"]) for c in run.of("checkpoint")] == [(3, "epoch"), (6, "epoch")]
    logs = [m["message"] for m in run.of("log")]
    assert any(m.startswith("Training with 2 worker processes (rank 0: CPU, gloo; 1 thread(s) each)") for m in logs)
    assert sum(m.startswith("Loaded base model") for m in logs) == 1
    assert run.of("started")[0]["num_threads"] == 1  # the job's 2 threads shared by the 2 ranks
    assert len(_rank_pids(run.stderr)) == 2
    # The checkpoint: servable weights by rank 0, each rank's part of the trainer state through DCP, hashed.
    for step in (3, 6):
        folder = checkpoint_dir(out, step)
        assert ckpt.verify(ckpt.Checkpoint(step, folder)) is None
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        names = set(json.loads((folder / "meta.json").read_text())["files"])
        assert {"state/distributed/.metadata", "state/distributed/__0_0.distcp"} <= names
        assert json.loads((folder / "state" / "progress.json").read_text())["workers"] == 2
    assert not list((out / "checkpoints").glob(".tmp-*"))


# Exact resume ------------------------------------------------------------------------------------------


def test_paused_and_resumed_ends_bit_identical(scenarios: Scenarios) -> None:
    stopped, resumed = scenarios.runs["paused"]
    assert stopped.rc == ExitCode.STOPPED, stopped.stderr[-4000:]
    assert stopped.last == {"type": "stopped", "step": 2, "checkpoint": stopped.of("checkpoint")[0]["path"]}
    assert any(m["message"] == "stopped by SIGUSR1 after step 2" for m in stopped.of("log"))
    assert resumed.of("started")[0]["start_step"] == 2
    _assert_identical(scenarios, "paused")


def test_a_killed_launcher_leaves_no_rank_and_resumes_bit_identical(scenarios: Scenarios) -> None:
    killed, resumed = scenarios.runs["killed"]
    assert killed.rc == -signal.SIGKILL
    # Killed at the boundary after step 4: step 4's metrics line may still have been in the launcher's pipe (the
    # worker makes its records match the trainer's files after a crash), never a step beyond it.
    assert [m["step"] for m in killed.of("metrics")] in ([1, 2, 3], [1, 2, 3, 4])
    assert scenarios.leftover_ranks == []
    assert resumed.of("started")[0]["start_step"] == 3  # the epoch checkpoint
    _assert_identical(scenarios, "killed")


def test_a_rank_killed_mid_run_fails_the_job_at_once_naming_it(scenarios: Scenarios) -> None:
    run = scenarios.runs["peer_killed"][0]
    assert run.rc == ExitCode.FAILED, run.stderr[-4000:]
    failed = run.last
    assert failed["type"] == "failed" and failed["code"] == "training_process_died", failed
    assert failed["message"].startswith("training process 1 of 2 was killed by SIGKILL"), failed
    assert [m["type"] for m in run.messages].count("failed") == 1
    assert scenarios.peer_kill["ended_after"] < 20  # gloo sees the lost peer; nobody waits for a timeout


def test_ranks_stop_at_a_checkpoint_when_the_worker_is_gone(scenarios: Scenarios) -> None:
    run = scenarios.runs["worker_killed"][0]
    stopped = run.last
    assert stopped["type"] == "stopped" and stopped["checkpoint"], run.stderr[-4000:]
    assert 1 <= stopped["step"] < 48 and [c["kind"] for c in run.of("checkpoint")][-1] == "pause"
    assert any(m["message"].startswith("stopped by the exit of the worker that started it") for m in run.of("log"))
    folder = Path(stopped["checkpoint"])
    assert ckpt.verify(ckpt.Checkpoint(stopped["step"], folder)) is None
    assert scenarios.leftover_ranks == []


def test_ranks_listen_on_loopback_only(scenarios: Scenarios) -> None:
    listening = scenarios.peer_kill["listening"]
    assert len(listening) == 2 and all(listening.values())  # gloo's sockets exist, and they are
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 (tcp), ::1 (tcp6)
    assert all(address in loopback for addresses in listening.values() for address in addresses), listening


# Two workers compute what one does -----------------------------------------------------------------


def test_two_lora_workers_give_one_workers_losses(scenarios: Scenarios) -> None:
    _completed(scenarios.runs["lora_two"][0])
    _completed(scenarios.runs["lora_one"][0])
    _assert_close(scenarios.outputs["lora_two"], scenarios.outputs["lora_one"])


def test_two_full_fine_tuning_workers_give_one_workers_losses(scenarios: Scenarios) -> None:
    run = scenarios.runs["full_two"][0]
    _completed(run)
    _completed(scenarios.runs["full_one"][0])
    assert any("LM head at every token" in m["message"] for m in run.of("log"))  # FSDP2: the model's own head
    _assert_close(scenarios.outputs["full_two"], scenarios.outputs["full_one"])
    assert (scenarios.outputs["full_two"] / "model" / "config.json").is_file()  # a servable model folder


def test_a_checkpoint_resumes_only_with_its_number_of_workers(scenarios: Scenarios, tmp_path: Path) -> None:
    spec = job_spec(tmp_path, scenarios.model_dir, scenarios.data, name="one")
    shutil.copytree(scenarios.outputs["straight"] / "checkpoints", Path(spec["output_dir"]) / "checkpoints")
    run = run_in_process(write_job(tmp_path / "job.json", spec))
    assert run.rc == ExitCode.FAILED
    assert run.last["code"] == "checkpoint_mismatch" and "compute.workers 2" in run.last["message"], run.last


# The launcher's rules, without processes ------------------------------------------------------------


class _Done:
    """A finished process as `_Ending.say` sees one."""

    def __init__(self, returncode: int):
        self.returncode = returncode


def _ending_of(lines: list[dict[str, Any]], codes: list[int], killed: frozenset[int] = frozenset()) -> dict[str, Any]:
    import io

    stream = io.StringIO()
    ending = _Ending(ProgressChannel(stream))
    for line in lines:
        ending.line(json.dumps(line))
    ending.say([_Done(code) for code in codes], set(killed))  # type: ignore[misc]
    return json.loads(stream.getvalue().splitlines()[-1])


def test_the_launcher_says_how_the_ranks_ended() -> None:
    peer_failed = {"type": "failed", "code": "training_error", "message": "gloo: peer lost", PEER_FIELD: 1}
    main_failed = {"type": "failed", "code": "training_error", "message": "ValueError: bad", "param": None}
    completed = {"type": "completed", "step": 6}
    # Rank 0's own ending wins over a peer's failure that came after it.
    assert _ending_of([completed, peer_failed], [0, 1])["type"] == "completed"
    # A peer that crashed and said why: its failure came first, and it is the cause.
    assert _ending_of([peer_failed, main_failed], [1, 1])["message"] == "gloo: peer lost"
    assert _ending_of([main_failed, peer_failed], [1, 1])["message"] == "ValueError: bad"
    # A peer that died without a word is the cause of rank 0's failure.
    died = _ending_of([main_failed], [1, -9])
    assert died["code"] == "training_process_died" and died["message"].startswith("training process 1 of 2 was killed")
    # ...unless the launcher killed it itself, after another rank had failed.
    assert _ending_of([main_failed], [1, -9], killed=frozenset({1}))["message"] == "ValueError: bad"
    # A stop: rank 0's `stopped` (peers exit 3 too).
    assert _ending_of([{"type": "stopped", "step": 2, "checkpoint": None}], [3, 3])["type"] == "stopped"


def test_a_rank_knows_it_is_one_from_its_environment() -> None:
    assert RankEnv.from_environment({}) is None
    env = RankEnv(1, 2, Path("/tmp/x/store"), None, 3)
    assert RankEnv.from_environment(env.variables()) == env
    variables = RankEnv(0, 2, Path("/tmp/x/store"), 0, 1).variables()
    assert variables["CUDA_VISIBLE_DEVICES"] == "" and variables["WORLD_SIZE"] == "2"
    assert variables["OMP_NUM_THREADS"] == "1"


def test_ranks_split_each_batch_by_position() -> None:
    from openft.training.distributed import ComputeUnavailable, Ranks, gpus_per_worker

    items = list(range(7))
    assert Ranks(0, 2).share(items) == [0, 2, 4, 6] and Ranks(1, 2).share(items) == [1, 3, 5]
    assert Ranks(1, 2).micro_batches(items, 2) == [([1, 3], True), ([5], True)]
    assert Ranks(3, 4).micro_batches(items[:3], 2) == []  # replicated weights: a rank may sit a batch out
    sharded = Ranks(3, 4, sharded=True)  # FSDP2: as many forward passes as rank 0, the extra one not counted
    assert sharded.micro_batches(items[:3], 2) == [([0], False)]
    assert Ranks().share(items) == items
    with pytest.raises(ComputeUnavailable, match="0 GPU"):
        gpus_per_worker(RankEnv(0, 2, Path("/tmp/x"), 1, 1))
    assert gpus_per_worker(RankEnv(0, 2, Path("/tmp/x"), None, 1)) == 0


def test_the_ranks_interface_is_the_one_holding_their_address() -> None:
    """gloo and NCCL are told the interface by name (torch 2.13 ignores gloo devices in `pg_options`)."""
    from openft.training.distributed import ComputeUnavailable, interface_holding

    assert interface_holding("127.0.0.1") == "lo"
    with pytest.raises(ComputeUnavailable, match=r"no network interface of this machine has the address 192\.0\.2\.77"):
        interface_holding("192.0.2.77")  # TEST-NET-1: never a local address
