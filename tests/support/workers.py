"""`openft worker` processes for tests, next to a `serve --no-worker` server (tests/support/server.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RunningWorker:
    worker_id: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown code runs (its trainers are left to notice on their own)."""
        if self.alive():
            self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops it; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_worker(
    data_dir: Path,
    models_dir: Path,
    worker_id: str,
    *,
    extra_env: dict[str, str] | None = None,
    max_jobs: int = 1,
) -> RunningWorker:
    """Start `openft worker`; it logs to DATA_DIR/worker-{id}.log (appended across restarts)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"worker-{worker_id.split('#')[0]}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFT_WORKER_POLL_SECONDS": "0.2", **(extra_env or {})}
    command = [sys.executable, "-m", "openft", "worker", "--data-dir", str(data_dir), "--models-dir", str(models_dir)]
    command += ["--max-jobs", str(max_jobs), "--worker-id", worker_id]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return RunningWorker(worker_id, process, log_path)
