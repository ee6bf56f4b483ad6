"""examples/demo_server.py, the server start both demos share (`make demo`, `make demo-rft`), on a real server:
it comes up over a fresh data dir, the key it returns is the one the server generated there, and stop ends it.
Both demos are loaded as `make` runs them (by path), to show they still find the shared module."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path
from types import ModuleType

import httpx
import pytest

EXAMPLES = Path(__file__).parents[2] / "examples"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


def test_both_demos_use_the_shared_server_start() -> None:
    shared = load(EXAMPLES / "demo_server.py", "demo_server")
    for demo in ("demo", "rft"):
        module = load(EXAMPLES / demo / "demo.py", f"{demo}_demo")
        assert module.start_server is shared.start_server and module.add_server_options is shared.add_server_options


def test_free_port_keeps_the_preferred_one_unless_it_is_taken() -> None:
    shared = load(EXAMPLES / "demo_server.py", "demo_server")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        other = shared.free_port(port)
        assert other != port
    assert shared.free_port(port) == port


@pytest.mark.e2e
def test_the_demo_server_starts_answers_with_its_key_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = load(EXAMPLES / "demo_server.py", "demo_server")
    monkeypatch.delenv("OPENFT_API_KEY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_dir = tmp_path / "fresh" / "data"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = shared.start_server(data_dir, port)
    try:
        assert server.base_url == f"http://127.0.0.1:{port}/v1"
        assert server.data_dir == data_dir.resolve() and server.log == data_dir / "server.log"
        assert server.api_key == (data_dir / "api_key").read_text().strip()
        headers = {"Authorization": f"Bearer {server.api_key}"}
        assert httpx.get(f"{server.base_url}/models", headers=headers, timeout=10).status_code == 200
        assert httpx.get(f"{server.base_url}/models", timeout=10).status_code == 401
    finally:
        server.stop()
    assert server.process.poll() is not None
