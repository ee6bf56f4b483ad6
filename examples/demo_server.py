"""The `openft serve` that a demo starts for itself on this machine, shared by `make demo` and `make demo-rft`.

Both demos need the same thing before their first SDK call: a server on a free loopback port over a data dir,
healthy, and the API key it wrote there; and the same thing after: the server stopped. Kept here so that the
two demos cannot drift apart in how they start it, where its log goes or how long they wait for it. The demos
put this folder on `sys.path` and import it by name (they are run as scripts, not as a package).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

START_SECONDS = 120
"""How long a demo waits for /health before it gives up: generous, for a first start on a slow machine."""


@dataclass
class DemoServer:
    process: subprocess.Popen[bytes]
    base_url: str
    """The OpenAI SDK's base_url for it, ending in /v1."""
    api_key: str
    data_dir: Path

    @property
    def log(self) -> Path:
        return self.data_dir / "server.log"

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--data-dir and --port, with the defaults both demos document."""
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("OPENFT_DATA_DIR", "openft-data")))
    parser.add_argument("--port", type=int, default=8000)


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens on it, else any free port (a server already on 8000 is left alone)."""
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(data_dir: Path, preferred_port: int) -> DemoServer:
    """Start `openft serve` over `data_dir` (created if missing), wait until it is healthy, read its API key.

    Exits the demo with a message when the server dies or does not answer in time; its output is in the log.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(preferred_port)
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 — the server keeps it
    command = [sys.executable, "-m", "openft", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited; see {data_dir / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        sys.exit("the server did not start in time")
    key = os.environ.get("OPENFT_API_KEY") or (data_dir / "api_key").read_text().strip()
    return DemoServer(process, f"http://127.0.0.1:{port}/v1", key, data_dir)
