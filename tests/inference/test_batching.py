"""Continuous batching: requests on one model — any adapter, or none — decode together, and each gets what
it would alone; the KV cache stays within its budget; cancelled requests leave; organizations take turns."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from transformers import AutoConfig

from openft.errors import InvalidRequest
from openft.inference import GenerationParams, GenerationStream, InferenceEngine, ModelTarget
from openft.inference.scheduler import kv_bytes_per_token
from openft.inference.stream import GenerationCancelled

GREEDY = GenerationParams(temperature=0, max_tokens=24)
PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "Tell me a long story about a fox who travels from Paris to Tokyo, please."}],
    [{"role": "user", "content": "x y z"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
]


class Steps:
    """Records the rows of every forward pass (the engine's `on_step`)."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, rows: int) -> None:
        self.rows.append(rows)


def text(stream: GenerationStream) -> str:
    return "".join(delta.text for delta in stream)


def test_greedy_output_in_a_mixed_adapter_batch_equals_each_request_alone(
    base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget
) -> None:
    targets = [base, lora_a, lora_b]
    alone_engine = InferenceEngine(max_batch_rows=1)
    alone = {(t, i): alone_engine.chat(t, p, GREEDY).choices[0].text for t in targets for i, p in enumerate(PROMPTS)}
    assert len({alone[(t, 1)] for t in targets}) == 3  # the adapters really change the answer

    steps = Steps()
    engine = InferenceEngine(on_step=steps)
    # Start every stream before reading any: they are all queued at once and join one batch.
    streams = {(t, i): engine.stream_chat(t, p, GREEDY) for t in targets for i, p in enumerate(PROMPTS)}
    together = {key: text(stream) for key, stream in streams.items()}
    assert together == alone
    assert max(steps.rows) >= 6  # rows of different adapters and prompt lengths really were decoded together
    stats = engine.stats()
    assert stats["batch_rows_total"] > stats["batch_steps_total"]
    assert stats["rows_running"] == 0 and stats["kv_cache_bytes_used"] == 0


def test_a_request_joining_a_running_batch_changes_nobody_s_tokens(base: ModelTarget, lora_a: ModelTarget) -> None:
    alone_engine = InferenceEngine(max_batch_rows=1)
    long_params = GenerationParams(temperature=0, max_tokens=60)
    expected_long = alone_engine.chat(base, PROMPTS[1], long_params).choices[0].text
    expected_short = alone_engine.chat(lora_a, PROMPTS[0], GREEDY).choices[0].text

    engine = InferenceEngine()
    first = engine.stream_chat(base, PROMPTS[1], long_params)
    head = next(first).text  # the long one is decoding
    second = engine.stream_chat(lora_a, PROMPTS[0], GREEDY)  # joins mid-flight, with a shorter prompt
    assert text(second) == expected_short
    assert head + text(first) == expected_long


def test_seeded_sampling_n_and_penalties_do_not_depend_on_the_batch(base: ModelTarget, lora_b: ModelTarget) -> None:
    params = GenerationParams(temperature=1.0, top_p=0.9, seed=7, n=3, max_tokens=16, presence_penalty=0.5)
    alone = InferenceEngine(max_batch_rows=3).chat(lora_b, PROMPTS[2], params)
    engine = InferenceEngine()
    with ThreadPoolExecutor(4) as pool:
        noise = [pool.submit(engine.chat, base, p, GREEDY) for p in PROMPTS[:3]]
        mine = engine.chat(lora_b, PROMPTS[2], params)
        [f.result() for f in noise]
    assert mine == alone


def test_kv_cache_budget_is_never_exceeded_and_requests_wait_for_room(base: ModelTarget, lora_a: ModelTarget) -> None:
    # Room for about two requests' worst case at a time (prompt ~30-60 tokens + 24 new ones each).
    budget = 2 * 90 * _kv_bytes_per_token(base)
    seen: list[int] = []
    engine: InferenceEngine

    def watch(rows: int) -> None:
        seen.append(engine.stats()["kv_cache_bytes_used"])

    engine = InferenceEngine(kv_cache_bytes=budget, on_step=watch)
    expected = [InferenceEngine().chat(t, p, GREEDY) for t in (base, lora_a) for p in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda tp: engine.chat(*tp, GREEDY), [(t, p) for t in (base, lora_a) for p in PROMPTS]))
    assert results == expected
    assert seen and max(seen) <= budget
    # A request that could not fit even alone is refused at once, naming max_tokens.
    with pytest.raises(InvalidRequest) as refused:
        engine.chat(base, PROMPTS[0], GenerationParams(max_tokens=400))
    assert refused.value.param == "max_tokens" and "KV cache" in refused.value.message


def _kv_bytes_per_token(target: ModelTarget) -> int:
    return kv_bytes_per_token(AutoConfig.from_pretrained(target.base_path), torch.float32)


def test_cancelled_requests_leave_the_batch_and_the_line(base: ModelTarget) -> None:
    endless = GenerationParams(temperature=0, max_tokens=400)
    engine = InferenceEngine(max_batch_rows=1)
    running = engine.stream_chat(base, PROMPTS[0], endless)
    next(running)
    waiting = [engine.stream_chat(base, PROMPTS[0], GREEDY) for _ in range(3)]
    assert engine.waiting(base) == 3
    for stream in waiting[:2]:
        stream.cancel()
    _wait(lambda: engine.waiting(base) == 1)
    for stream in waiting[:2]:
        with pytest.raises(GenerationCancelled):
            stream.started.result(timeout=10)
    running.close()  # the running one leaves within a step; the last waiting one then runs
    end = running.finished.result(timeout=10)
    assert end.cancelled and end.completion_tokens < 400
    assert text(waiting[2]) == InferenceEngine().chat(base, PROMPTS[0], GREEDY).choices[0].text
    assert engine.stats()["requests_running"] == 0


def test_organizations_take_turns_while_waiting(base: ModelTarget) -> None:
    """One organization's burst cannot starve another: waiting requests are admitted round-robin."""
    engine = InferenceEngine(max_batch_rows=1)
    holder = engine.stream_chat(base, PROMPTS[0], GenerationParams(temperature=0, max_tokens=400), org="a")
    next(holder)
    order: list[str] = []
    lock = threading.Lock()
    streams: list[GenerationStream] = []
    for name in ["a1", "a2", "a3", "a4", "b1", "b2"]:
        stream = engine.stream_chat(base, PROMPTS[0], GenerationParams(temperature=0, max_tokens=2), org=name[0])
        stream.started.add_done_callback(lambda _, name=name: _append(lock, order, name))
        streams.append(stream)
    holder.close()
    for stream in streams:
        text(stream)
    assert order == ["a1", "b1", "a2", "b2", "a3", "a4"]


def _append(lock: threading.Lock, order: list[str], name: str) -> None:
    with lock:
        order.append(name)


def _wait(condition: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
