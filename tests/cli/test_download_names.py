"""`openft files download` never writes outside the current folder on the server's say-so.

The file's name comes from the server (and before that from whoever uploaded it). A server that is not
openft, or a hostile one, answers here with names like `../x`: a real HTTP server on loopback, speaking the
two Files API calls the command makes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from openft.client.files import download_name
from tests.cli.conftest import Cli

CONTENT = b'{"messages": []}\n'


class _HostileFiles(BaseHTTPRequestHandler):
    filename = "results.csv"

    def do_GET(self) -> None:
        if self.path.endswith("/content"):
            body, kind = CONTENT, "application/octet-stream"
        else:
            file = {"id": "file-x", "object": "file", "bytes": len(CONTENT), "created_at": 1, "status": "processed"}
            body, kind = (
                json.dumps({**file, "filename": self.filename, "purpose": "fine-tune"}).encode(),
                "application/json",
            )
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[type[_HostileFiles], Cli, Path]]:
    handler = type("Handler", (_HostileFiles,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    here = tmp_path / "outer" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler, Cli({"OPENFT_BASE_URL": url, "OPENFT_API_KEY": "k", "OPENFT_DATA_DIR": str(tmp_path)}), here
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("server_name", "written"),
    [
        ("../escaped.jsonl", "escaped.jsonl"),
        ("/tmp/abs.jsonl", "abs.jsonl"),
        ("..\\..\\win.jsonl", "win.jsonl"),
        (".bashrc", "bashrc"),
        ("a/b/../../../c.jsonl", "c.jsonl"),
    ],
)
def test_the_servers_file_name_is_reduced_to_a_name_here(
    hostile: tuple[type[_HostileFiles], Cli, Path], server_name: str, written: str
) -> None:
    handler, cli, here = hostile
    handler.filename = server_name
    cli("files", "download", "file-x")
    assert sorted(os.listdir(here)) == [written]
    assert (here / written).read_bytes() == CONTENT
    assert sorted(os.listdir(here.parent)) == ["here"]  # nothing one folder up


@pytest.mark.parametrize("server_name", ["..", ".", "", "/", "../"])
def test_a_name_that_is_no_file_name_is_refused(
    hostile: tuple[type[_HostileFiles], Cli, Path], server_name: str
) -> None:
    handler, cli, here = hostile
    handler.filename = server_name
    result = cli("files", "download", "file-x", code=1)
    assert "pass --out" in result.stderr
    assert os.listdir(here) == [] and sorted(os.listdir(here.parent)) == ["here"]


def test_an_existing_file_or_symlink_is_not_written_through(hostile: tuple[type[_HostileFiles], Cli, Path]) -> None:
    handler, cli, here = hostile
    handler.filename = "data.jsonl"
    outside = here.parent / "outside.txt"
    (here / "data.jsonl").symlink_to(outside)  # dangling: exists() says no, but a write would follow it
    result = cli("files", "download", "file-x", code=1)
    assert "exists" in result.stderr and not outside.exists()
    cli("files", "download", "file-x", "--force")  # replaces the link itself
    assert not (here / "data.jsonl").is_symlink() and (here / "data.jsonl").read_bytes() == CONTENT
    assert not outside.exists()


def test_an_explicit_out_path_is_honoured(hostile: tuple[type[_HostileFiles], Cli, Path]) -> None:
    handler, cli, here = hostile
    handler.filename = "../ignored.jsonl"
    cli("files", "download", "file-x", "--out", "../chosen.jsonl")
    assert (here.parent / "chosen.jsonl").read_bytes() == CONTENT


def test_download_name() -> None:
    assert download_name("results.csv") == "results.csv"
    assert download_name("x\x00y\n.jsonl") == "xy.jsonl"
    assert download_name(None) is None
