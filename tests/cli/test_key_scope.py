"""The data folder's key (the local server's admin key) never leaves for a non-loopback `--base-url`.

The "other host" is reached through a recording HTTP proxy on loopback (`HTTP_PROXY`, which the SDK and
httpx honour), so the test sees exactly what the CLI would have sent elsewhere without any traffic
leaving this machine.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from openft.client.connection import is_loopback_url
from tests.cli.conftest import Cli


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append({"url": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: ClassVar[list[dict[str, str]]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def _env(proxy_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "OPENFT_BASE_URL": "http://models.elsewhere.example",
        "OPENFT_DATA_DIR": str(data_dir),
        "HTTP_PROXY": proxy_url,
        "http_proxy": proxy_url,
        "NO_PROXY": "",
        "no_proxy": "",
        **extra,
    }


def test_local_key_is_not_sent_to_another_host(
    proxy: tuple[str, list[dict[str, str]]], tmp_path: Path, make_cli: Callable[[dict[str, str]], Cli]
) -> None:
    proxy_url, seen = proxy
    (tmp_path / "api_key").write_text("sk-openft-local-admin-key\n")
    refused = make_cli(_env(proxy_url, tmp_path))("models", "list", code=1)
    assert "no API key for http://models.elsewhere.example/v1" in refused.stderr
    assert "(code: missing_api_key)" in refused.stderr and refused.stderr.count("\n") == 1
    assert seen == []  # nothing went out, the admin key least of all

    # an explicit key is sent where the user said: the proxy path itself works, so the check above can fail
    make_cli(_env(proxy_url, tmp_path, OPENFT_API_KEY="sk-remote"))("models", "list", "--json")
    assert [request["authorization"] for request in seen] == ["Bearer sk-remote"]
    assert "models.elsewhere.example" in seen[0]["url"]


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.8.9.10/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://LOCALHOST./v1", True),
        ("http://[::1]:8000/v1", True),
        ("https://api.example.com/v1", False),
        ("http://127.0.0.1.example.com/v1", False),
        ("http://localhost.example.com/v1", False),
        ("http://10.0.0.5:8000/v1", False),
        ("http://0.0.0.0:8000/v1", False),
        ("http://user@[::1/v1", False),
        ("/v1", False),
    ],
)
def test_which_urls_are_loopback(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback
