"""`/health` latency while a server answers many concurrent chat requests on one model.

    python benchmarks/health_under_chat_load.py [--chats 30] [--max-tokens 64] [--stream] [--compare DIR]

Starts a real server (`openft serve`, no worker) on the tiny test model, fires `--chats` chat requests
at once, and meanwhile sends a `/health` request every 50 ms (each on its own connection, so a stalled
one does not hold back the next) until the last chat is answered; prints the health latencies (p50,
p99, max) and how long the chats took. `--compare DIR` runs the same measurement against
another checkout first (e.g. the commit before admission control, made with
`git worktree add /tmp/base-inf <commit>`), by putting `DIR/src` on the server's PYTHONPATH.

Before admission control, each waiting chat held a thread of the server's pool on the model's lock, and
the pool (40 threads) is what `/health` and every other sync route run on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.server import start_server  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402

MODEL = "tiny-llama"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(src: Path, models: Path, chats: int, max_tokens: int, stream: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as data:
        server = start_server(
            Path(data),
            models,
            extra_env={"PYTHONPATH": str(src), "OPENFT_MAX_QUEUED_REQUESTS": str(max(64, chats))},
            extra_args=["--no-worker"],
        )
        try:
            headers = {"Authorization": f"Bearer {server.api_key}"}
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Tell me about the Zorblax kettle."}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream": stream,
            }
            warm = dict(body, max_tokens=1, stream=False)
            httpx.post(f"{server.url}/v1/chat/completions", json=warm, headers=headers, timeout=120).raise_for_status()

            statuses: list[int] = []

            def chat() -> None:
                url = f"{server.url}/v1/chat/completions"
                with httpx.Client(timeout=600) as client, client.stream("POST", url, json=body, headers=headers) as r:
                    r.read()
                    statuses.append(r.status_code)

            threads = [threading.Thread(target=chat) for _ in range(chats)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            latencies: list[float] = []

            def probe() -> None:
                asked = time.perf_counter()
                httpx.get(f"{server.url}/health", timeout=600).raise_for_status()
                latencies.append(time.perf_counter() - asked)

            probes = []  # one every 50 ms, each on its own: a stalled probe does not delay the next ones
            while any(thread.is_alive() for thread in threads):
                probes.append(threading.Thread(target=probe))
                probes[-1].start()
                time.sleep(0.05)
            for thread in threads + probes:
                thread.join()
            elapsed = time.perf_counter() - started
        finally:
            server.stop()
    assert statuses.count(200) == chats, statuses
    return {
        "health_p50_ms": 1000 * statistics.median(latencies),
        "health_p99_ms": 1000 * percentile(latencies, 0.99),
        "health_max_ms": 1000 * max(latencies),
        "health_samples": len(latencies),
        "chats_s": elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stream", action="store_true", help="streamed chat requests")
    parser.add_argument("--compare", type=Path, help="another checkout to measure first (its src/ is used)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models:
        build_tiny_model(Path(models) / MODEL)
        runs = [("this checkout", ROOT / "src")]
        if args.compare:
            runs.insert(0, (f"{args.compare}", args.compare.resolve() / "src"))
        kind = "streamed" if args.stream else "non-streamed"
        print(f"{args.chats} concurrent {kind} chats of {args.max_tokens} tokens on {MODEL}; /health every 50 ms")
        for name, src in runs:
            figures = measure(src, Path(models), args.chats, args.max_tokens, args.stream)
            print(
                f"{name:>40}: /health p50 {figures['health_p50_ms']:8.1f} ms  p99 {figures['health_p99_ms']:8.1f} ms"
                f"  max {figures['health_max_ms']:8.1f} ms  ({figures['health_samples']:.0f} samples);"
                f" chats done in {figures['chats_s']:.1f} s"
            )


if __name__ == "__main__":
    main()
