"""A real openft server on loopback, started as `python -m openft serve` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

API_KEY = "sk-openft-test-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    data_dir: Path,
    models_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    api_key: str = API_KEY,
    extra_args: list[str] | None = None,
    port: int | None = None,
    start_timeout: float = 60,
) -> RunningServer:
    """`extra_args` go to `openft serve` (e.g. `--no-worker`); `port` restarts a server where it was."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OPENFT_WORKER_POLL_SECONDS": "0.2",
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "openft", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--models-dir", str(models_dir), "--api-key", api_key, *(extra_args or [])]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = RunningServer(f"http://127.0.0.1:{port}", api_key, data_dir, process, log_path)
    deadline = time.monotonic() + start_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start:\n{server.log()}")
