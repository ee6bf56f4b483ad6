"""Admission control for inference, on a real server: a bounded line per model (429 past it), 503 for a request
that waited too long, other routes never wait behind generation, and a client that leaves stops its generation
or leaves the line.

The servers here decode one row at a time (`OPENFT_MAX_BATCH_ROWS=1`), so a running request fills the batch
and the others wait in line, as they do on any server once its batch is full.

A "long" tiny model (context raised to 40k tokens; greedy decoding writes newlines and never ends) keeps
the model busy for as long as a test needs: its generations end only when their client leaves. Clients are
raw sockets, so a test decides exactly when a client goes away.
"""

from __future__ import annotations

import json
import re
import select
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.server import RunningServer, start_server
from tests.support.tiny_model import build_tiny_model
from tests.support.waiting import wait_for

MODEL = "long-llama"
MAX_QUEUED = 45
"""More than the 40 threads of the server's pool: waiting requests used to hold one each."""
ENDLESS = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 30000, "temperature": 0}
SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "temperature": 0}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models")
    folder = build_tiny_model(models / MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 40000  # rotary positions: any length works
    (folder / "config.json").write_text(json.dumps(config))
    running = start_server(
        tmp_path_factory.mktemp("data"),
        models,
        extra_env={"OPENFT_MAX_QUEUED_REQUESTS": str(MAX_QUEUED), "OPENFT_MAX_BATCH_ROWS": "1"},
        extra_args=["--no-worker"],
    )
    yield running
    running.stop()


class RawClient:
    """One HTTP/1.1 request on its own socket; `close()` is the client going away."""

    def __init__(self, server: RunningServer, path: str, body: dict[str, Any]):
        url = urlsplit(server.url)
        self.sock = socket.create_connection((url.hostname, url.port))
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {server.api_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + payload)
        self.received = b""

    def fileno(self) -> int:
        return self.sock.fileno()

    def read_some(self) -> bool:
        """Read what has arrived; False once the server closed the connection."""
        chunk = self.sock.recv(65536)
        self.received += chunk
        return bool(chunk)

    def wait_for(self, pattern: bytes, timeout: float = 120) -> None:
        """Read until `pattern` has arrived (e.g. a stream's first content delta)."""
        wait_for(lambda: pattern in self.received or (select.select([self], [], [], 0.05)[0] and not self.read_some()))
        assert pattern in self.received, self.received[-500:]

    @property
    def status(self) -> int | None:
        match = re.match(rb"HTTP/1.1 (\d{3})", self.received)
        return int(match.group(1)) if match else None

    def header(self, name: str) -> str | None:
        match = re.search(rb"\r\n" + name.encode() + rb": ([^\r]*)\r\n", self.received, re.IGNORECASE)
        return match.group(1).decode() if match else None

    def json(self) -> Any:
        return json.loads(self.received.split(b"\r\n\r\n", 1)[1])

    def close(self) -> None:
        self.sock.close()


def answered(clients: list[RawClient], count: int, timeout: float = 60) -> list[RawClient]:
    """Wait until `count` of the clients have a whole response (these answer with a body and a length)."""

    def complete(client: RawClient) -> bool:
        length = client.header("content-length")
        head, _, body = client.received.partition(b"\r\n\r\n")
        return bool(head) and length is not None and len(body) >= int(length)

    def enough() -> list[RawClient] | None:
        drain(clients)
        done = [client for client in clients if complete(client)]
        return done if len(done) >= count else None

    return wait_for(enough, timeout=timeout, what=f"{count} responses")


def drain(clients: list[RawClient]) -> None:
    """Read whatever has arrived for any of the clients (waiting at most 50 ms)."""
    for ready in select.select(clients, [], [], 0.05)[0]:
        ready.read_some()


def log_lines(server: RunningServer, text: str) -> list[str]:
    """The server's log lines holding `text` (the service logs each generation, drop and stop)."""
    return [line for line in server.log().splitlines() if text in line]


@pytest.mark.e2e
def test_a_full_line_is_refused_other_routes_answer_and_clients_that_leave_stop_their_work(
    server: RunningServer,
) -> None:
    seen = {text: len(log_lines(server, text)) for text in ("left while waiting", "stopped after", ": generating (")}

    def new_lines(text: str) -> list[str]:
        return log_lines(server, text)[seen[text] :]

    holder = RawClient(server, "/v1/chat/completions", {**ENDLESS, "stream": True})
    holder.wait_for(b'"content":"\\n')  # generating, and it only ends when this client leaves

    waiting = [RawClient(server, "/v1/chat/completions", SHORT) for _ in range(MAX_QUEUED + 3)]
    refused = answered(waiting, 3)
    assert len(refused) == 3
    for client in refused:
        assert client.status == 429
        assert int(client.header("retry-after") or 0) >= 1
        assert client.json()["error"]["code"] == "rate_limit_exceeded"
    queued = [client for client in waiting if client not in refused]

    # The model is busy and its line full: health, the key check and the files API answer all the same.
    headers = {"Authorization": f"Bearer {server.api_key}"}
    assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/v1/files", headers=headers, timeout=30).status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers=headers, timeout=30).status_code == 200
    drain([*queued, holder])
    assert all(client.status is None for client in queued)  # still waiting: the generation is still going
    assert b'finish_reason":"length' not in holder.received and b"[DONE]" not in holder.received

    # Clients that leave while waiting are dropped from the line without running.
    leaving, staying = queued[:40], queued[40:]
    for client in leaving:
        client.close()
    wait_for(lambda: len(new_lines("left while waiting")) >= 40, timeout=60, what="40 drops")

    # The streaming client leaves: its generation stops, and the model serves the line.
    holder.close()
    stopped = wait_for(lambda: new_lines("stopped after"), timeout=60, what="the stream to stop")
    tokens = int(re.search(r"stopped after (\d+) tokens", stopped[0]).group(1))  # type: ignore[union-attr]
    assert tokens < ENDLESS["max_tokens"]
    served = answered(staying, len(staying), timeout=120)
    assert {client.status for client in served} == {200}
    assert len(new_lines("left while waiting")) == 40  # none of the dropped ones ran
    assert len(new_lines(": generating (")) == 1 + len(staying)


@pytest.mark.e2e
def test_a_non_streamed_request_whose_client_leaves_is_cancelled(server: RunningServer) -> None:
    before = len(log_lines(server, "stopped after"))
    started = len(log_lines(server, ": generating ("))
    client = RawClient(server, "/v1/chat/completions", ENDLESS)
    wait_for(lambda: len(log_lines(server, ": generating (")) > started, timeout=60, what="the generation to start")
    client.close()
    stopped = wait_for(lambda: log_lines(server, "stopped after")[before:], timeout=60, what="the generation to stop")
    tokens = int(re.search(r"stopped after (\d+) tokens", stopped[0]).group(1))  # type: ignore[union-attr]
    assert tokens < ENDLESS["max_tokens"]
    headers = {"Authorization": f"Bearer {server.api_key}"}
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=SHORT, headers=headers, timeout=60)
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 1


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"max_tokens": 32769}, "max_tokens"),
        ("/v1/chat/completions", {"max_completion_tokens": 10**9}, "max_completion_tokens"),
        ("/v1/completions", {"max_tokens": 32769}, "max_tokens"),
        ("/v1/chat/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/chat/completions", {"stop": "x" * 257}, "stop"),
        ("/v1/chat/completions", {"stop": ["ok", "y" * 1000]}, "stop"),
    ],
)
def test_request_bounds_are_400_naming_the_parameter(
    server: RunningServer, path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": MODEL, **extra}
    body |= {"messages": SHORT["messages"]} if "chat" in path else {"prompt": "hi"}
    headers = {"Authorization": f"Bearer {server.api_key}"}
    reply = httpx.post(f"{server.url}{path}", json=body, headers=headers, timeout=60)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


@pytest.mark.e2e
def test_a_streamed_legacy_completion_of_several_prompts_takes_a_turn_per_prompt(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    body = {"model": MODEL, "prompt": ["The fox", "The dog"], "max_tokens": 3, "temperature": 0, "echo": True}
    plain = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=60).json()
    texts = ["", ""]
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json={**body, "stream": True}, headers=headers, timeout=60
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    texts[choice["index"]] += choice["text"]
    assert texts == [choice["text"] for choice in plain["choices"]]
    assert texts[0].startswith("The fox") and texts[1].startswith("The dog")


@pytest.fixture(scope="module")
def impatient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server whose requests wait at most 2 s for room in their model's batch."""
    models = tmp_path_factory.mktemp("models")
    folder = build_tiny_model(models / MODEL)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 40000
    (folder / "config.json").write_text(json.dumps(config))
    running = start_server(
        tmp_path_factory.mktemp("data"),
        models,
        extra_env={"OPENFT_MAX_BATCH_ROWS": "1", "OPENFT_REQUEST_TIMEOUT_SECONDS": "2"},
        extra_args=["--no-worker"],
    )
    yield running
    running.stop()


@pytest.mark.e2e
def test_a_request_that_waits_too_long_gets_503_with_retry_after(impatient_server: RunningServer) -> None:
    server = impatient_server
    holder = RawClient(server, "/v1/chat/completions", {**ENDLESS, "stream": True})
    holder.wait_for(b'"content":"\\n')
    headers = {"Authorization": f"Bearer {server.api_key}"}
    for stream in (False, True):
        reply = httpx.post(
            f"{server.url}/v1/chat/completions", json={**SHORT, "stream": stream}, headers=headers, timeout=60
        )
        assert reply.status_code == 503, reply.text
        assert int(reply.headers["retry-after"]) >= 1
        assert reply.json()["error"]["code"] == "service_unavailable"
    assert b"[DONE]" not in holder.received  # the running request was not disturbed
    holder.close()
    wait_for(lambda: log_lines(server, "stopped after"), timeout=60, what="the stream to stop")
    reply = httpx.post(f"{server.url}/v1/chat/completions", json=SHORT, headers=headers, timeout=60)
    assert reply.status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30).text
    assert 'openft_requests_total{endpoint="chat",outcome="timeout"} 2.0' in metrics
    assert 'openft_requests_total{endpoint="chat",outcome="ok"} 1.0' in metrics
    assert 'openft_requests_total{endpoint="chat",outcome="cancelled"} 1.0' in metrics  # the holder's client left
    assert "openft_time_to_first_token_seconds_count" in metrics
