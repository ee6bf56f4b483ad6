"""Streaming: deltas add up to the non-streamed reply, errors come first, and the base is never held hostage."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from openft.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from openft.inference import (
    GenerationChoice,
    GenerationParams,
    GenerationResult,
    GenerationStream,
    InferenceEngine,
    ModelTarget,
    StreamDelta,
)
from openft.inference import decoding as decoding_module

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
UNICODE = "Grüße aus Köln, 東京 und 😀! Ça va?"


def gather(stream: GenerationStream, n: int) -> tuple[GenerationResult, list[StreamDelta]]:
    """The stream's deltas put together the way the API does, plus the deltas themselves."""
    deltas = list(stream)
    choices = []
    for index in range(n):
        mine = [d for d in deltas if d.index == index]
        assert [d.finish_reason is not None for d in mine].count(True) == 1 and mine[-1].finish_reason
        text = "".join(d.text for d in mine)
        calls = [call for d in mine for call in d.tool_calls or []]
        logprobs = [t for d in mine for t in d.logprobs or []] if mine[0].logprobs is not None else None
        choices.append(
            GenerationChoice(
                text=None if calls and not text else text,
                finish_reason=mine[-1].finish_reason,
                logprobs=logprobs,
                tool_calls=calls or None,
            )
        )
    return GenerationResult(choices, stream.prompt_tokens, stream.completion_tokens), deltas


def without_call_ids(result: GenerationResult) -> GenerationResult:
    for choice in result.choices:
        for call in choice.tool_calls or []:
            object.__setattr__(call, "id", "call_x")
    return result


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine()


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(temperature=0, max_tokens=30),
        GenerationParams(temperature=1.0, max_tokens=30, n=2, seed=11, logprobs=True, top_logprobs=2),
        GenerationParams(temperature=0.8, max_tokens=30, n=2, seed=4, presence_penalty=1, frequency_penalty=0.5),
        GenerationParams(temperature=1.0, max_tokens=30, seed=2, json_object=True),
        GenerationParams(temperature=0, max_tokens=600),  # the context cap: "length" at 512 tokens
    ],
    ids=["greedy", "n2-logprobs", "penalties", "json", "context-cap"],
)
def test_stream_adds_up_to_the_non_streamed_reply(
    engine: InferenceEngine, base: ModelTarget, lora_a: ModelTarget, params: GenerationParams
) -> None:
    for target in (base, lora_a):
        expected = engine.chat(target, MESSAGES, params)
        streamed, _ = gather(engine.stream_chat(target, MESSAGES, params), params.n)
        assert streamed == expected


def test_stream_with_stop_strings_never_sends_them(engine: InferenceEngine, base: ModelTarget) -> None:
    full = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=60)).choices[0].text
    assert full is not None
    middle = full[len(full) // 2 :]
    stop = next(middle[i : i + 3] for i in range(len(middle)) if middle[i : i + 3].isascii() and middle[i] != " ")
    # A stop string whose first character shows up before it: held back, then released when it differs.
    decoy = stop[0] + "\x00never"
    params = GenerationParams(temperature=0, max_tokens=60, n=2, stop=[decoy, stop])
    expected = engine.chat(base, MESSAGES, params)
    streamed, deltas = gather(engine.stream_chat(base, MESSAGES, params), 2)
    assert streamed == expected
    assert expected.choices[0].text == full[: full.index(stop)]
    assert expected.choices[0].finish_reason == "stop"
    sent = ""
    for delta in (d for d in deltas if d.index == 0):
        sent += delta.text
        assert (expected.choices[0].text or "").startswith(sent)  # so never a piece of the stop string
    assert len(deltas) > 5  # it did stream, not just send everything at the end


def test_stream_of_multibyte_text_never_splits_a_character(scripted: Any, base: ModelTarget) -> None:
    engine = scripted(UNICODE)
    for params in (GenerationParams(temperature=0, max_tokens=80), GenerationParams(temperature=0, max_tokens=80, n=2)):
        expected = engine.chat(base, MESSAGES, params)
        assert [c.text for c in expected.choices] == [UNICODE] * params.n
        streamed, deltas = gather(engine.stream_chat(base, MESSAGES, params), params.n)
        assert streamed == expected
        assert all("\ufffd" not in d.text for d in deltas)
        assert len(deltas) > 10


def test_stream_cut_inside_a_character_ends_like_the_non_streamed_text(scripted: Any, base: ModelTarget) -> None:
    engine = scripted("abc😀")
    params = GenerationParams(temperature=0, max_tokens=4)  # 😀 is 4 byte tokens: cut after the first
    expected = engine.chat(base, MESSAGES, params)
    assert expected.choices[0].text is not None and expected.choices[0].text.startswith("abc")
    streamed, _ = gather(engine.stream_chat(base, MESSAGES, params), 1)
    assert streamed == expected


def test_stream_with_tool_calls(scripted: Any, base: ModelTarget) -> None:
    engine = scripted('I will look.\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n')
    params = GenerationParams(temperature=0, max_tokens=80, n=2)
    expected = engine.chat(base, MESSAGES, params, tools=TOOLS)
    streamed, deltas = gather(engine.stream_chat(base, MESSAGES, params, tools=TOOLS), 2)
    assert without_call_ids(streamed) == without_call_ids(expected)
    assert expected.choices[0].text == "I will look."
    assert expected.choices[0].finish_reason == "tool_calls"
    assert all("{" not in d.text for d in deltas)  # the call never leaks into the content
    assert next(d.text for d in deltas if d.index == 0) == "I"  # content streams before the call


def test_stream_complete_with_echo(engine: InferenceEngine, base: ModelTarget) -> None:
    params = GenerationParams(temperature=0.9, max_tokens=20, n=2, seed=8, stop=["e"])
    expected = engine.complete(base, "The capital", params, echo=True)
    streamed, deltas = gather(engine.stream_complete(base, "The capital", params, echo=True), 2)
    assert streamed == expected
    assert {d.text for d in deltas[:2]} == {"The capital"}
    assert all(c.text is not None and c.text.startswith("The capital") for c in expected.choices)


# Errors -------------------------------------------------------------------------------------------


def test_request_errors_are_raised_before_the_stream_starts(
    engine: InferenceEngine, base: ModelTarget, base_dir: Path, tmp_path: Path
) -> None:
    long = [{"role": "user", "content": "Paris " * 600}]
    with pytest.raises(ContextLengthExceeded):
        engine.stream_chat(base, long, GenerationParams(max_tokens=5))
    with pytest.raises(ContextLengthExceeded):
        engine.stream_complete(base, "Paris " * 600, GenerationParams(max_tokens=5))
    with pytest.raises(InvalidRequest):
        engine.stream_chat(base, [{"role": "user", "content": [{"type": "image_url"}]}], GenerationParams())
    with pytest.raises(InvalidRequest):
        engine.stream_chat(base, MESSAGES, GenerationParams(tool_choice="required"))
    with pytest.raises(ModelNotFound):
        engine.stream_chat(
            ModelTarget(base_path=base_dir, adapter_path=tmp_path / "gone"), MESSAGES, GenerationParams()
        )
    with pytest.raises(ModelNotFound):
        engine.stream_chat(ModelTarget(base_path=tmp_path), MESSAGES, GenerationParams())
    # and none of them kept the base
    assert run_with_timeout(lambda: engine.chat(base, MESSAGES, GenerationParams(max_tokens=3)), 10)


def run_with_timeout(call: Any, seconds: float) -> Any:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(call).result(timeout=seconds)


def test_a_failure_mid_stream_comes_after_the_deltas_before_it(
    monkeypatch: pytest.MonkeyPatch, engine: InferenceEngine, base: ModelTarget
) -> None:
    original = decoding_module.ChoiceState.add
    calls = {"n": 0}

    def failing_add(self: Any, token_id: int, logprob: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 6:
            raise RuntimeError("boom")
        original(self, token_id, logprob)

    monkeypatch.setattr(decoding_module.ChoiceState, "add", failing_add)
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=30))
    received = []
    with pytest.raises(RuntimeError, match="boom"):
        for delta in stream:
            received.append(delta)
    assert len(received) >= 3 and all(d.finish_reason is None for d in received)
    assert list(stream) == []
    monkeypatch.setattr(decoding_module.ChoiceState, "add", original)
    assert run_with_timeout(lambda: engine.chat(base, MESSAGES, GenerationParams(max_tokens=3)), 10)


# Closing, dropping, threads -----------------------------------------------------------------------


def test_close_mid_stream_releases_the_base_promptly(scripted: Any, base: ModelTarget) -> None:
    engine = scripted("x" * 400, delay=0.02)  # ~8 s if it ran to the end
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=400))
    first = [next(stream), next(stream)]
    assert "".join(d.text for d in first) == "xx"
    started = time.monotonic()
    stream.close()
    result = run_with_timeout(lambda: engine.chat(base, MESSAGES, GenerationParams(max_tokens=2)), 5)
    assert time.monotonic() - started < 1.0
    assert result.completion_tokens == 2
    assert list(stream) == []


def test_a_dropped_stream_releases_the_base(scripted: Any, base: ModelTarget) -> None:
    engine = scripted("y" * 400, delay=0.02)
    with engine.stream_chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=400)) as stream:
        next(stream)
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=400))
    next(stream)
    del stream
    gc.collect()
    started = time.monotonic()
    run_with_timeout(lambda: engine.chat(base, MESSAGES, GenerationParams(max_tokens=2)), 5)
    assert time.monotonic() - started < 1.0


def test_next_from_different_threads(engine: InferenceEngine, base: ModelTarget) -> None:
    params = GenerationParams(temperature=1.0, max_tokens=40, n=2, seed=9)
    expected = engine.chat(base, MESSAGES, params)
    stream = engine.stream_chat(base, MESSAGES, params)
    pools = [ThreadPoolExecutor(1) for _ in range(3)]
    deltas, threads = [], set()

    def step() -> StreamDelta | None:
        threads.add(threading.get_ident())
        return next(stream, None)

    for i in range(10_000):
        delta = pools[i % 3].submit(step).result(timeout=10)
        if delta is None:
            break
        deltas.append(delta)
    for pool in pools:
        pool.shutdown()
    assert len(threads) == 3
    texts = ["".join(d.text for d in deltas if d.index == i) for i in range(2)]
    assert texts == [c.text for c in expected.choices]
    assert stream.completion_tokens == expected.completion_tokens


def test_streams_on_the_same_base_take_turns_and_stay_separate(
    engine: InferenceEngine, base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget
) -> None:
    params = GenerationParams(temperature=0, max_tokens=20)
    targets = [base, lora_a, lora_b] * 2
    expected = [engine.chat(t, MESSAGES, params).choices[0].text for t in targets]
    streams = [engine.stream_chat(t, MESSAGES, params) for t in targets[:1]]

    def consume(target: ModelTarget) -> str:
        return "".join(d.text for d in engine.stream_chat(target, MESSAGES, params))

    with ThreadPoolExecutor(6) as pool:
        texts = list(pool.map(consume, targets))
    assert texts == expected
    assert "".join(d.text for d in streams[0]) == expected[0]
