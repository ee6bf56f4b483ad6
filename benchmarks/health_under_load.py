"""`/health` latency and server memory while 30 clients without a key send 16 MiB JSON bodies at once.

    python benchmarks/health_under_load.py [--attackers 30] [--seconds 10]

Starts a real `openft serve` on loopback (no worker, an empty models folder), then opens `--attackers` raw
sockets, each sending `POST /v1/fine_tuning/jobs` with no key and a 16 MiB JSON body made of many small objects
(the costliest kind to parse and to walk for lone surrogates), each again on a new connection once answered,
for `--seconds` (each at least once). Meanwhile one client asks
`GET /health` every 20 ms. Printed: the /health latencies (p50, p99, max, over the whole attack), how the
attackers were answered, how long the attack took, and the server's peak RSS (VmHWM).

`--with-key` sends the server's key instead: then each body is read, parsed and walked (and refused with a
400, as it is not a job), which shows whether that work leaves the event loop free.

To measure another version of the code, point PYTHONPATH at its `src` (the server is `python -m openft`):
    PYTHONPATH=/tmp/base-main/src python benchmarks/health_under_load.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.support.server

from tests.support.server import start_server

BODY_BYTES = 16 * 1024 * 1024
HEALTH_EVERY_S = 0.02


def costly_body(size: int = BODY_BYTES) -> bytes:
    """A JSON array of small objects, just under `size` bytes: millions of Python objects once parsed."""
    item = b'{"k": "\\u00e9", "n": [1, 2, 3]},'
    count = (size - 2) // len(item)
    return b"[" + item * (count - 1) + item[:-1] + b"]"


def attack(url: str, body: bytes, key: str | None, until: float, statuses: Counter[str], lock: threading.Lock) -> None:
    """Send the body again and again until `until` (at least once), each time on a new connection."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n"
    ).encode()
    while True:
        outcome = "error"
        try:
            with socket.create_connection((host, int(port)), timeout=600) as sock:
                sock.sendall(head)
                with contextlib.suppress(OSError):  # the server answered and closed without reading it
                    sock.sendall(body)
                answer = sock.recv(64)
                outcome = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/1.1 ") else "closed"
        except OSError as exc:
            outcome = type(exc).__name__
        with lock:
            statuses[outcome] += 1
        if time.perf_counter() >= until:
            return


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attackers", type=int, default=30)
    parser.add_argument("--with-key", action="store_true", help="send the server's key: the bodies are parsed")
    parser.add_argument("--seconds", type=float, default=10, help="keep attacking this long (each at least once)")
    args = parser.parse_args()
    body = costly_body()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        server = start_server(Path(tmp) / "data", models, extra_env={"OPENFT_RUN_WORKER": "0"})
        try:
            idle_rss = peak_rss_mib(server.process.pid)
            statuses: Counter[str] = Counter()
            lock = threading.Lock()
            latencies: list[float] = []
            health_errors = 0
            started = time.perf_counter()
            until = started + args.seconds
            threads = [
                threading.Thread(
                    target=attack,
                    args=(server.url, body, server.api_key if args.with_key else None, until, statuses, lock),
                )
                for _ in range(args.attackers)
            ]
            for thread in threads:
                thread.start()
            with httpx.Client(timeout=600) as client:
                while any(thread.is_alive() for thread in threads):
                    sent = time.perf_counter()
                    try:
                        client.get(f"{server.url}/health").raise_for_status()
                        latencies.append(time.perf_counter() - sent)
                    except httpx.HTTPError:
                        health_errors += 1
                    time.sleep(HEALTH_EVERY_S)
            attack_s = time.perf_counter() - started
            figures = {
                "attackers": args.attackers,
                "with_key": args.with_key,
                "attacks": sum(statuses.values()),
                "body_mib": round(len(body) / 2**20, 2),
                "attack_s": round(attack_s, 2),
                "attacker_answers": dict(statuses),
                "health_requests": len(latencies),
                "health_errors": health_errors,
                "health_p50_ms": round(statistics.median(latencies) * 1000, 1) if latencies else None,
                "health_p99_ms": round(percentile(latencies, 0.99) * 1000, 1) if latencies else None,
                "health_max_ms": round(max(latencies) * 1000, 1) if latencies else None,
                "server_rss_idle_mib": round(idle_rss),
                "server_rss_peak_mib": round(peak_rss_mib(server.process.pid)),
            }
            print(json.dumps(figures, indent=2))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
