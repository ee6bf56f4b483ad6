"""A stand-in for the Hugging Face hub on loopback: answers the model-info API from a dict and records
every request, so tests can say exactly what the code under test asked the hub (and that it fetched no
weights). Point huggingface_hub at it with `HF_ENDPOINT` (subprocesses) or `endpoint=` (in process)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    url: str
    repos: dict[str, dict[str, int]]
    """repo id → {file name: size in bytes}."""
    requests: list[str] = field(default_factory=list)
    """`METHOD path` of every request received, in order."""

    def model_info(self, repo_id: str) -> dict[str, Any]:
        siblings = [{"rfilename": name, "size": size} for name, size in self.repos[repo_id].items()]
        return {"id": repo_id, "modelId": repo_id, "sha": SHA, "private": False, "siblings": siblings}


@contextmanager
def fake_hub(repos: dict[str, dict[str, int]] | None = None) -> Iterator[FakeHub]:
    """Serve `repos` on 127.0.0.1 until the block ends. Unknown repositories and file downloads are 404."""
    hub = FakeHub(url="", repos=dict(repos or {}))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            path = self.path.split("?", 1)[0]
            repo_id = None
            if path.startswith("/api/models/"):
                parts = path[len("/api/models/") :].split("/")
                repo_id = "/".join(parts[:2])
            if repo_id in hub.repos:
                body = json.dumps(hub.model_info(repo_id)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            else:
                body = json.dumps({"error": "Repository not found"}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
