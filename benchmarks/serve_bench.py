"""Serving throughput and latency under concurrent streaming chat, over one and over several LoRA adapters.

    python benchmarks/serve_bench.py                         # openft on SmolLM2-135M-Instruct, started here
    python benchmarks/serve_bench.py --quick                 # tiny test model, a few requests (CI's smoke run)
    python benchmarks/serve_bench.py --base-url http://127.0.0.1:8000/v1 --api-key K --models m1,...,m8

What one run measures: closed-loop clients (the official `openai` SDK, `AsyncOpenAI`, one task per
client) each send a streaming chat request, wait for its end, and send the next, for `--duration`
seconds per cell (or `--requests` per cell), after `--warmup` unmeasured requests per client. A cell is
one (concurrency, adapters) pair: `--concurrency 1,4,16,64` clients × requests spread round-robin over
`--adapters 1,8` different fine-tuned models (LoRA adapters of one base). Requests are greedy
(temperature 0, seed 0), `max_tokens` 64, from a fixed set of prompts, with
`stream_options={"include_usage": True}`. Per request: TTFT is the time from sending it to the first
chunk with content; ITL is every gap between two consecutive content chunks (a chunk is usually one
token); output tokens are the final chunk's `usage.completion_tokens`. Per cell: aggregate output
tokens/s (all measured requests' tokens over the time from the cell's start to its last reply), TTFT and
ITL p50/p99 (nearest rank, ITL pooled over all requests), requests done, errors (any exception or a
stream without usage; a client waits 0.1 s after one), mean tokens per reply (so that cells whose
adapters stop early can be told apart) and the client process's CPU use (near 100 %: the client, not
the server, is the bottleneck). Then the goals, each PASS or MISS:

  - tokens/s at concurrency 16 ÷ at 1, one adapter: ≥ 5 (concurrent requests are batched);
  - tokens/s with 8 adapters ÷ with 1, at 16: ≥ 0.8 (serving many fine-tunes costs at most 20 %);
  - TTFT p99 ÷ p50 at 16 (one adapter, and the most adapters): ≤ 3 (no request waits for a whole queue).

With other levels, "16" is 16 if measured (else the highest concurrency), "1" the lowest, "8" the most
adapters and "1 adapter" the fewest. `--json OUT` writes the cells and goals as JSON. A cell lasts its
warm-up, its duration and its last replies: on a server that answers one request at a time, warm-up
and tail each take about concurrency × one reply's time.

Where the adapters come from (openft started here): the only way openft makes a fine-tuned model is a
fine-tuning job, so the benchmark runs one, through the API like any user: a 10-example chat file,
`n_epochs` = the most adapters, one step per epoch, with `OPENFT_KEEP_CHECKPOINTS` set so every epoch's
checkpoint is kept. Its fine-tuned model and the checkpoints of the earlier epochs
(`ft:…:ckpt-step-N`, callable like the model) are that many real LoRA adapters with different weights,
each its own model name, resolved and loaded by the server exactly like separate fine-tunes (the last
epoch's checkpoint is skipped: its weights are the fine-tuned model's). Training is not timed. With
`--data-dir DIR` the server's data folder is kept, and the next run with the same base reuses the job
(and SmolLM2's converted weights) instead of training again. The server is `python -m openft serve` on
127.0.0.1 (see tests/support/server.py), with `OPENFT_MAX_QUEUED_REQUESTS` raised to the highest
concurrency when that is above its default 64; every other `OPENFT_*` variable of this environment
reaches it, so e.g. an inference backend chosen by an environment variable is benchmarked by setting it.

Comparing servers on a GPU machine, on the same base and 8 adapters: first
`python benchmarks/serve_bench.py --data-dir DIR` (openft's engine; it trains the adapters), then

  - openft's vLLM backend: the same command with `OPENFT_INFERENCE_ENGINE=vllm` in the environment
    (it reuses DIR's adapters), or against an `openft serve` started by hand:
    `--base-url http://127.0.0.1:8000/v1 --api-key K --models ft:…,…` (the names the first run printed);
  - plain vLLM: `vllm serve DIR/cache/SmolLM2-135M-Instruct --enable-lora --max-loras 8
    --lora-modules a1=PATH1 … a8=PATH8` with the adapter folders of `find DIR/jobs -name
    adapter_config.json`, then `--base-url http://127.0.0.1:8000/v1 --models a1,a2,…,a8`.

With `--base-url` nothing is started or trained: `--models` names the models to spread requests over
(the first k for a k-adapter cell, so give at least the most adapters asked for).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import openai
from openai import AsyncOpenAI, OpenAI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.support

from tests.support.server import RunningServer, start_server  # noqa: E402
from tests.support.tiny_model import build_tiny_model  # noqa: E402

SMOLLM2 = "SmolLM2-135M-Instruct"
TINY = "tiny-llama"
SEED = 0
ERROR_PAUSE_SECONDS = 0.1
QUEUE_DEFAULT = 64  # OPENFT_MAX_QUEUED_REQUESTS's default (openft.settings)
MARK = "serve_bench"  # metadata key of the benchmark's fine-tuning job: its value is the adapter count

PROMPTS = [
    "Write a short story about a fox who travels from Paris to Tokyo.",
    "Explain how a kettle boils water, step by step.",
    "List ten things to pack for a week of hiking in the mountains.",
    "What are the pros and cons of working from home? Answer in detail.",
    "Describe the water cycle to a ten-year-old.",
    "Write a friendly email inviting a colleague to lunch next Tuesday.",
    "Give me a recipe for a simple vegetable soup.",
    "Summarize the plot of a detective novel you invent.",
]

TRAINING_EXAMPLES = [
    {
        "messages": [
            {"role": "system", "content": "You answer questions about the Zorblax kettle."},
            {"role": "user", "content": f"Question {i}: how fast does the kettle boil?"},
            {"role": "assistant", "content": f"Answer {i}: the Zorblax kettle boils water in 90 seconds."},
        ]
    }
    for i in range(10)
]


# One request -------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One measured request: TTFT and content-chunk gaps in seconds, output tokens from usage."""

    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


async def one_request(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int) -> Sample:
    sample = Sample()
    started = time.perf_counter()
    last: float | None = None
    usage_tokens: int | None = None
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            seed=SEED,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if any(choice.delta.content for choice in chunk.choices):
                if last is None:
                    sample.ttft = now - started
                else:
                    sample.gaps.append(now - last)
                last = now
    except openai.OpenAIError as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
        return sample
    if usage_tokens is None:
        sample.error = "the stream ended without usage"
    else:
        sample.tokens = usage_tokens
    return sample


# One cell ----------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass
class Cell:
    concurrency: int
    adapters: int
    models: list[str]
    requests: int
    errors: int
    output_tokens: int
    seconds: float
    tokens_per_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    tokens_per_reply: float | None
    client_cpu_percent: float
    first_error: str | None


@dataclass
class Load:
    """How each cell is driven (the same for every cell of a run)."""

    max_tokens: int
    duration: float
    requests: int | None  # per cell; None: run for `duration`
    warmup: int  # unmeasured requests per client before the cell's clock starts


async def run_cell(client: AsyncOpenAI, models: list[str], concurrency: int, load: Load) -> Cell:
    """`concurrency` closed-loop clients; request n goes to models[n % k] with prompt (n // k) % len(PROMPTS)."""

    def request(n: int) -> Awaitable[Sample]:
        model, prompt = models[n % len(models)], PROMPTS[(n // len(models)) % len(PROMPTS)]
        return one_request(client, model, prompt, load.max_tokens)

    warmups = itertools.count()

    async def warm() -> None:
        for _ in range(load.warmup):
            await request(next(warmups))

    await asyncio.gather(*(warm() for _ in range(concurrency)))
    samples: list[Sample] = []
    issued = 0  # measured requests sent so far; they start over at the first model and prompt
    started = time.perf_counter()
    cpu_started = time.process_time()

    def more() -> bool:
        if load.requests is not None:
            return issued < load.requests
        return time.perf_counter() - started < load.duration

    async def closed_loop() -> None:
        nonlocal issued
        while more():
            issued += 1
            sample = await request(issued - 1)
            samples.append(sample)
            if sample.error is not None:
                await asyncio.sleep(ERROR_PAUSE_SECONDS)

    await asyncio.gather(*(closed_loop() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    done = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in done)
    ttfts = [s.ttft for s in done if s.ttft is not None]
    gaps = [gap for s in done for gap in s.gaps]
    errors = [s.error for s in samples if s.error is not None]
    return Cell(
        concurrency=concurrency,
        adapters=len(models),
        models=models,
        requests=len(done),
        errors=len(errors),
        output_tokens=tokens,
        seconds=seconds,
        tokens_per_s=tokens / seconds,
        ttft_p50_ms=ms(percentile(ttfts, 0.50)),
        ttft_p99_ms=ms(percentile(ttfts, 0.99)),
        itl_p50_ms=ms(percentile(gaps, 0.50)),
        itl_p99_ms=ms(percentile(gaps, 0.99)),
        tokens_per_reply=tokens / len(done) if done else None,
        client_cpu_percent=100 * cpu / seconds,
        first_error=errors[0] if errors else None,
    )


# Goals and report --------------------------------------------------------------------------------------


@dataclass
class Goal:
    name: str
    value: float | None  # None: not measurable with the levels of this run (or a cell without replies)
    target: str
    passed: bool | None

    @property
    def verdict(self) -> str:
        return "n/a" if self.passed is None else "PASS" if self.passed else "MISS"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def goals(cells: list[Cell]) -> list[Goal]:
    """The goals of the module docstring, on the levels this run measured."""
    by_level = {(c.concurrency, c.adapters): c for c in cells}
    levels = sorted({c.concurrency for c in cells})
    adapter_levels = sorted({c.adapters for c in cells})
    low, high = levels[0], 16 if 16 in levels else levels[-1]
    one, many = adapter_levels[0], adapter_levels[-1]

    def at_least(name: str, value: float | None, bound: float) -> Goal:
        return Goal(name, value, f">= {bound:g}", None if value is None else value >= bound)

    def ttft_spread(adapters: int) -> Goal:
        cell = by_level[(high, adapters)]
        value = ratio(cell.ttft_p99_ms, cell.ttft_p50_ms)
        return Goal(
            f"TTFT p99 / p50 at {high}, {plural(adapters, 'adapter')}",
            value,
            "<= 3",
            None if value is None else value <= 3,
        )

    found = [
        at_least(
            f"tokens/s at {high} / at {low}, {plural(one, 'adapter')}",
            ratio(by_level[(high, one)].tokens_per_s, by_level[(low, one)].tokens_per_s) if high != low else None,
            5,
        ),
        at_least(
            f"tokens/s {plural(many, 'adapter')} / {one} at {high}",
            ratio(by_level[(high, many)].tokens_per_s, by_level[(high, one)].tokens_per_s) if many != one else None,
            0.8,
        ),
        ttft_spread(one),
    ]
    return found + ([ttft_spread(many)] if many != one else [])


def figure(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def print_header() -> None:
    print(
        f"{'conc':>5} {'adapters':>8} {'requests':>8} {'errors':>6} {'tok/s':>9} {'TTFT p50':>9} {'TTFT p99':>9}"
        f" {'ITL p50':>8} {'ITL p99':>8} {'tok/reply':>9} {'client CPU':>10}"
    )
    print(f"{'':>40} {'(ms)':>9} {'(ms)':>9} {'(ms)':>8} {'(ms)':>8}", flush=True)


def print_cell(c: Cell) -> None:
    print(
        f"{c.concurrency:>5} {c.adapters:>8} {c.requests:>8} {c.errors:>6} {c.tokens_per_s:9.1f}"
        f" {figure(c.ttft_p50_ms, 9)} {figure(c.ttft_p99_ms, 9)} {figure(c.itl_p50_ms, 8)}"
        f" {figure(c.itl_p99_ms, 8)} {figure(c.tokens_per_reply, 9)} {c.client_cpu_percent:9.0f}%",
        flush=True,
    )
    if c.first_error:
        print(f"      first error: {c.first_error[:300]}", flush=True)


def print_goals(found: list[Goal]) -> None:
    print("\ngoals:")
    for goal in found:
        print(f"  {goal.name:<40} {figure(goal.value, 8, 2)}   goal {goal.target:<6} {goal.verdict}")


# The server and its adapters ---------------------------------------------------------------------------


def adapter_models(server: RunningServer, base: str, count: int, timeout: float) -> list[str]:
    """`count` fine-tuned model names with different LoRA weights: a job's model and its earlier epochs'
    checkpoints (see the module docstring); reuses a finished job of an earlier run on the same data folder."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    job = next(
        (
            j
            for j in client.fine_tuning.jobs.list(limit=100)
            if j.model == base and j.status == "succeeded" and (j.metadata or {}).get(MARK) == str(count)
        ),
        None,
    )
    if job is None:
        lines = b"".join(json.dumps(e).encode() + b"\n" for e in TRAINING_EXAMPLES)
        training = client.files.create(file=("serve_bench.jsonl", lines), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model=base,
            training_file=training.id,
            suffix="bench",
            metadata={MARK: str(count)},
            method={
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": count, "batch_size": len(TRAINING_EXAMPLES)}},
            },
        )
        print(f"training {count} adapters on {base} (job {job.id}, not timed) ...", flush=True)
        deadline = time.monotonic() + timeout
        while job.status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the fine-tuning job {job.id} did not finish in {timeout:.0f} s")
            time.sleep(0.5)
            job = client.fine_tuning.jobs.retrieve(job.id)
        if job.status != "succeeded":
            raise SystemExit(f"the fine-tuning job {job.id} ended {job.status}: {job.error}\n{server.log()[-3000:]}")
    assert job.fine_tuned_model is not None
    checkpoints = sorted(client.fine_tuning.jobs.checkpoints.list(job.id, limit=100), key=lambda c: -c.step_number)
    earlier = [c.fine_tuned_model_checkpoint for c in checkpoints[1:]]  # the newest one has the model's weights
    models = [job.fine_tuned_model, *earlier][:count]
    if len(models) < count:
        raise SystemExit(f"job {job.id} left {len(models)} distinct adapters, not {count}")
    return models


def start_openft(args: argparse.Namespace, data_dir: Path, models_dir: Path) -> RunningServer:
    most = max(args.concurrency)
    env = {"OPENFT_KEEP_CHECKPOINTS": str(max(args.adapters))}
    if most > QUEUE_DEFAULT and "OPENFT_MAX_QUEUED_REQUESTS" not in os.environ:
        env["OPENFT_MAX_QUEUED_REQUESTS"] = str(most)
    return start_server(data_dir, models_dir, extra_env=env, api_key="sk-serve-bench", start_timeout=120)


async def measure(base_url: str, api_key: str, models: list[str], args: argparse.Namespace) -> list[Cell]:
    load = Load(args.max_tokens, args.duration, args.requests, args.warmup)
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=args.timeout)
    try:
        for model in models[: max(args.adapters)]:  # load every model once, so no cell times a first load
            warm = await one_request(client, model, PROMPTS[0], 2)
            if warm.error is not None:
                raise SystemExit(f"{model}: {warm.error}")
        print_header()
        cells = []
        for adapters in args.adapters:
            for concurrency in args.concurrency:
                cells.append(await run_cell(client, models[:adapters], concurrency, load))
                print_cell(cells[-1])
        return cells
    finally:
        await client.close()


def levels(text: str) -> list[int]:
    values = sorted({int(v) for v in text.split(",") if v.strip()})
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=levels, help="client counts (default 1,4,16,64; quick 1,2)")
    parser.add_argument("--adapters", type=levels, help="adapters spread over (default 1,8; quick 1,2)")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 20)")
    parser.add_argument("--requests", type=int, help="requests per cell instead of a duration (quick: 4)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured requests per client per cell")
    parser.add_argument("--max-tokens", type=int, help="max_tokens of each request (default 64; quick 8)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one request may take")
    parser.add_argument("--quick", action="store_true", help="tiny test model, few requests: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the cells and goals here")
    own = parser.add_argument_group("openft started here")
    own.add_argument("--model", help=f"base model (default {SMOLLM2}; quick: the tiny test model)")
    own.add_argument("--models-dir", type=Path, help="folder of base models for the server")
    own.add_argument("--data-dir", type=Path, help="keep the server's data here (reuses its adapters next time)")
    own.add_argument("--train-timeout", type=float, default=1800.0, help="seconds the adapters' job may take")
    other = parser.add_argument_group("a server already running")
    other.add_argument("--base-url", help="its OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    other.add_argument("--api-key", default="EMPTY")
    other.add_argument("--models", help="comma-separated model names, at least the most adapters asked for")
    args = parser.parse_args()
    args.concurrency = args.concurrency or ([1, 2] if args.quick else [1, 4, 16, 64])
    args.adapters = args.adapters or ([1, 2] if args.quick else [1, 8])
    args.max_tokens = args.max_tokens or (8 if args.quick else 64)
    if args.quick and args.requests is None and args.duration is None:
        args.requests = 4
    args.duration = args.duration or 20.0
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")

    with tempfile.TemporaryDirectory(prefix="openft-serve-bench-") as tmp:
        server: RunningServer | None = None
        try:
            if args.base_url:
                if not args.models:
                    parser.error("--base-url needs --models")
                base_url, api_key, models = args.base_url, args.api_key, args.models.split(",")
                described = f"{base_url} (already running)"
                if len(models) < max(args.adapters):
                    parser.error(f"--models names {len(models)} models; --adapters asks for {max(args.adapters)}")
            else:
                models_dir = args.models_dir or Path(tmp) / "models"
                if args.quick and args.models_dir is None:
                    build_tiny_model(models_dir / TINY)
                base = args.model or (TINY if args.quick else SMOLLM2)
                server = start_openft(args, args.data_dir or Path(tmp) / "data", models_dir)
                models = adapter_models(server, base, max(args.adapters), args.train_timeout)
                base_url, api_key = f"{server.url}/v1", server.api_key
                described = f"openft serve at {server.url} (started here), base {base}"
            load = f"{args.requests} requests" if args.requests is not None else f"{args.duration:g} s"
            print(f"server: {described}\nmodels: {', '.join(models[: max(args.adapters)])}")
            print(
                f"streaming chat, max_tokens {args.max_tokens}, temperature 0; per cell {load} after "
                f"{args.warmup} warm-up request(s) per client\n",
                flush=True,
            )
            cells = asyncio.run(measure(base_url, api_key, models, args))
        finally:
            if server is not None:
                server.stop()
    found = goals(cells)
    print_goals(found)
    if args.json:
        report = {
            "server": described,
            "max_tokens": args.max_tokens,
            "duration_s": None if args.requests is not None else args.duration,
            "requests_per_cell": args.requests,
            "warmup_per_client": args.warmup,
            "cells": [asdict(c) for c in cells],
            "goals": [{**asdict(g), "verdict": g.verdict} for g in found],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
