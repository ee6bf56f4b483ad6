"""A stand-in for the Hugging Face hub on loopback: answers the model-info API from a dict and records
every request, so tests can say exactly what the code under test asked the hub (and that it fetched no
weights). Point huggingface_hub at it with `HF_ENDPOINT` (subprocesses) or `endpoint=` (in process)."""

from __future__ import annotations

import hashlib
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
    contents: dict[str, dict[str, bytes]] = field(default_factory=dict)
    """repo id → {file name: bytes} of the files it can download (their sizes are listed from these)."""
    requests: list[str] = field(default_factory=list)
    """`METHOD path` of every request received, in order."""

    def model_info(self, repo_id: str) -> dict[str, Any]:
        sizes = {**self.repos.get(repo_id, {}), **{n: len(b) for n, b in self.contents.get(repo_id, {}).items()}}
        siblings = [{"rfilename": name, "size": size} for name, size in sizes.items()]
        return {"id": repo_id, "modelId": repo_id, "sha": SHA, "private": False, "siblings": siblings}

    def file(self, path: str) -> bytes | None:
        """The bytes behind `/{org}/{name}/resolve/{revision}/{file}`, if served."""
        parts = path.lstrip("/").split("/", 4)
        if len(parts) < 5 or parts[2] != "resolve":
            return None
        return self.contents.get(f"{parts[0]}/{parts[1]}", {}).get(parts[4])


@contextmanager
def fake_hub(
    repos: dict[str, dict[str, int]] | None = None, contents: dict[str, dict[str, bytes]] | None = None
) -> Iterator[FakeHub]:
    """Serve `repos` (model info) and `contents` (model info and downloadable files) on 127.0.0.1 until the
    block ends. Unknown repositories and files are 404."""
    hub = FakeHub(url="", repos=dict(repos or {}), contents=dict(contents or {}))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            hub.requests.append(f"{self.command} {self.path}")
            path = self.path.split("?", 1)[0]
            repo_id = None
            if path.startswith("/api/models/"):
                parts = path[len("/api/models/") :].split("/")
                repo_id = "/".join(parts[:2])
            content = hub.file(path)
            if content is not None:
                self.send_response(200)
                self.send_header("X-Repo-Commit", SHA)
                self.send_header("ETag", f'"{hashlib.sha256(content).hexdigest()}"')
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(content)
                return
            if repo_id in hub.contents and "/tree/" in path:  # the file listing snapshot_download pages through
                info = hub.model_info(repo_id)["siblings"]
                tree = [{"type": "file", "path": f["rfilename"], "size": f["size"], "oid": SHA} for f in info]
                body = json.dumps(tree).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
            elif repo_id in hub.repos or repo_id in hub.contents:
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
