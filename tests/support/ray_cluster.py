"""A real local Ray cluster for tests: `ray start --head` on loopback in a temp folder, stopped by process tree.

Every port is chosen free and passed explicitly (Ray's defaults collide between concurrent clusters, and pytest
runs test files in parallel); `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` keeps Ray on 127.0.0.1 instead of the
machine's interface address (it must be in the driver's environment too: `ENV`). `ray stop` would stop every Ray
process on the machine, so the head runs in its own session and is stopped by killing it and every descendant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port

ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}


@dataclass
class RayCluster:
    address: str
    process: subprocess.Popen[bytes]
    temp_dir: Path
    log_path: Path

    def processes(self, title: str) -> list[int]:
        """Pids of this cluster's processes whose command line starts with `title` (e.g. `ray::RayTrainWorker`)."""
        return [pid for pid in _descendants(self.process.pid) if _cmdline(pid).startswith(title)]

    def stop(self) -> None:
        pids = _descendants(self.process.pid)
        for pid in [self.process.pid, *pids]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        _reap(pids)


def start_ray_cluster(cpus: int = 2, start_timeout: float = 90) -> RayCluster:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port, dashboard, agent = free_port(), free_port(), free_port()
    low = 20000 + (os.getpid() % 400) * 100  # a worker-port range of this test process's own
    ray = Path(sys.executable).with_name("ray")
    command = [
        str(ray), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
        f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}", "--include-dashboard=false",
        f"--min-worker-port={low}", f"--max-worker-port={low + 99}", f"--num-cpus={cpus}", "--num-gpus=0",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", "--object-store-memory=200000000",
    ]  # fmt: skip
    log_path = temp_dir / "head.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True
        )
    cluster = RayCluster(f"127.0.0.1:{port}", process, temp_dir, log_path)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        if "--block" in log_path.read_text(errors="replace") and "Ray runtime started" in log_path.read_text(
            errors="replace"
        ):
            return cluster
        time.sleep(0.5)
    cluster.stop()
    raise RuntimeError(f"Ray did not start in {start_timeout} s:\n{log_path.read_text(errors='replace')}")


@contextlib.contextmanager
def ray_cluster(cpus: int = 2) -> Iterator[RayCluster]:
    cluster = start_ray_cluster(cpus)
    try:
        yield cluster
    finally:
        cluster.stop()


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _reap(pids: list[int], timeout: float = 10) -> None:
    """Wait until the killed processes are gone (they are not our children: poll /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
