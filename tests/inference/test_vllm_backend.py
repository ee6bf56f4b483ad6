"""`VllmEngine` against a fake vLLM: the tiny model's real tokenizer and templates, scripted token ids.

vLLM needs a GPU and is never installed here, so `FakeVllm` stands in for the few entry points `VllmApi`
names (an `AsyncLLM` that streams scripted ids as vLLM's DELTA outputs, `SamplingParams`, `LoRARequest`,
structured-outputs params). Everything else is the real code: openft's prompt rendering and `ChoiceState`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from openft.errors import InvalidRequest, ModelNotFound
from openft.inference import GenerationParams, ModelTarget, StreamDelta
from openft.inference.backends import VLLM_MISSING, choose_engine, vllm_available
from openft.inference.decoding import collect
from openft.inference.engine import InferenceEngine
from openft.inference.prompt import render_prompt
from openft.inference.stream import GenerationCancelled
from openft.inference.tokens import TokenVocabulary
from openft.inference.vllm_backend import VllmApi, VllmEngine, load_vllm_api

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


# The fake vLLM -------------------------------------------------------------------------------------------


class Params:
    """`SamplingParams` / `StructuredOutputsParams` stand-in: keeps its keyword arguments."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["kwargs"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Params) and other.kwargs == self.kwargs


@dataclass(frozen=True)
class LoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass(frozen=True)
class Logprob:
    logprob: float
    rank: int


@dataclass
class Completion:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None


@dataclass
class Output:
    request_id: str
    outputs: list[Completion]
    finished: bool


@dataclass
class Request:
    prompt_token_ids: list[int]
    params: Any
    request_id: str
    lora: LoRARequest | None
    done: threading.Event = field(default_factory=threading.Event)


DELTA = object()
"""`RequestOutputKind.DELTA`."""


class FakeAsyncLLM:
    """Streams each sequence's script (then the end-of-sequence id) `chunk` tokens per output, like vLLM's
    DELTA outputs: one `CompletionOutput` per sequence and output, its `index` saying which."""

    def __init__(self, options: dict[str, Any], vllm: FakeVllm):
        self.options = options
        self.vllm = vllm
        self.requests: list[Request] = []
        self.aborted: list[str] = []
        self.shut_down = False

    async def generate(
        self, prompt: dict[str, Any], sampling_params: Any, request_id: str, *, lora_request: Any = None
    ) -> AsyncIterator[Output]:
        request = Request(list(prompt["prompt_token_ids"]), sampling_params, request_id, lora_request)
        self.requests.append(request)
        try:
            if self.vllm.refuse is not None:
                raise self.vllm.refuse
            await asyncio.sleep(self.vllm.delay)
            p = sampling_params
            sequences = []
            for i in range(p.n):
                ids = [*self.vllm.script_ids(i), self.vllm.eos_id]
                reason = "stop" if len(ids) <= p.max_tokens else "length"
                sequences.append((ids[: p.max_tokens], reason))
            sent = [0] * p.n
            while any(sent[i] < len(ids) for i, (ids, _) in enumerate(sequences)):
                for i, (ids, reason) in enumerate(sequences):
                    if sent[i] >= len(ids):
                        continue
                    chunk = ids[sent[i] : sent[i] + self.vllm.chunk]
                    sent[i] += len(chunk)
                    finished = sent[i] == len(ids)
                    logprobs = (
                        [self.vllm.logprobs_for(t, p.logprobs) for t in chunk] if p.logprobs is not None else None
                    )
                    yield Output(
                        request_id,
                        [Completion(i, chunk, logprobs, reason if finished else None)],
                        finished=all(s == len(seq) for s, (seq, _) in zip(sent, sequences, strict=True)),
                    )
                    await asyncio.sleep(self.vllm.delay)
        finally:
            request.done.set()

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def shutdown(self) -> None:
        self.shut_down = True


class FakeVllm:
    """The fake vLLM's state: its engines (one per `create_engine`) and what they will write."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, structured: bool = True):
        self.tokenizer = tokenizer
        self.eos_id: int = tokenizer.eos_token_id
        self.texts = ["The capital of France is Paris."]
        self.chunk = 2
        self.delay = 0.0
        self.refuse: Exception | None = None
        self.engines: list[FakeAsyncLLM] = []
        self.start_gate = threading.Event()
        self.start_gate.set()
        self.api = VllmApi(
            create_engine=self.create_engine,
            sampling_params=Params,
            lora_request=LoRARequest,
            structured_field="structured_outputs" if structured else None,
            structured_params=Params if structured else None,
            delta_output_kind=DELTA,
            engine_arg_names=frozenset(
                [
                    "model",
                    "tokenizer",
                    "dtype",
                    "enable_lora",
                    "max_loras",
                    "max_lora_rank",
                    "gpu_memory_utilization",
                    "trust_remote_code",
                    "logprobs_mode",
                    "max_logprobs",
                ]
            ),
        )

    def create_engine(self, options: dict[str, Any]) -> FakeAsyncLLM:
        assert self.start_gate.wait(10)
        engine = FakeAsyncLLM(options, self)
        self.engines.append(engine)
        return engine

    def script_ids(self, index: int) -> list[int]:
        text = self.texts[index % len(self.texts)]
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def logprobs_for(token_id: int, k: int) -> dict[int, Logprob]:
        """k alternatives (ids 10, 11, … with falling logprobs) plus the sampled token, at rank 7."""
        entries = {10 + j: Logprob(-0.25 * (j + 1), j + 1) for j in range(k)}
        entries.setdefault(token_id, Logprob(-2.0, 7))
        return entries

    @property
    def requests(self) -> list[Request]:
        return [r for engine in self.engines for r in engine.requests]


@pytest.fixture(scope="module")
def tokenizer(base_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(base_dir)


@pytest.fixture
def fake(tokenizer: PreTrainedTokenizerBase) -> FakeVllm:
    return FakeVllm(tokenizer)


@pytest.fixture
def engine(fake: FakeVllm) -> Iterator[VllmEngine]:
    vllm = VllmEngine(api=fake.api, max_models=2)
    yield vllm
    vllm.close()


def text_of(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """What the tokenizer gives back for `text` (the tiny tokenizer may not round-trip every character)."""
    return str(tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]))


def read_all(stream: Any) -> list[StreamDelta]:
    with stream:
        return list(stream)


# Requests ------------------------------------------------------------------------------------------------


def test_chat_sends_openfts_prompt_and_the_stream_adds_up_to_the_reply(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget, tokenizer: PreTrainedTokenizerBase
) -> None:
    params = GenerationParams(temperature=0.7, max_tokens=40)
    result = engine.chat(base, MESSAGES, params)
    deltas = read_all(engine.stream_chat(base, MESSAGES, params))

    expected = text_of(tokenizer, fake.texts[0])
    assert result.choices[0].text == expected
    assert result.choices[0].finish_reason == "stop"
    assert collect(iter(deltas), 1, False) == result.choices
    assert len(deltas) > 2  # really streamed, not one delta at the end
    prompt = render_prompt(tokenizer, MESSAGES)
    assert [r.prompt_token_ids for r in fake.requests] == [prompt, prompt]
    assert result.prompt_tokens == len(prompt)
    assert result.completion_tokens == len(fake.script_ids(0)) + 1  # with the end-of-sequence token
    assert len(fake.engines) == 1  # one engine, started once, for both requests


def test_completion_with_echo(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    fake.texts = [" jumps over the lazy dog."]
    result = engine.complete(base, "The quick brown fox", GenerationParams(max_tokens=30), echo=True)
    text = result.choices[0].text
    assert text is not None and text.startswith("The quick brown fox")
    assert fake.requests[0].prompt_token_ids == list(fake.tokenizer("The quick brown fox")["input_ids"])


def test_sampling_params_mapping(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    params = GenerationParams(
        temperature=0.7,
        top_p=0.9,
        n=2,
        seed=3,
        presence_penalty=0.5,
        frequency_penalty=-0.25,
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        stop=["never"],
    )
    result = engine.chat(base, MESSAGES, params)
    sent = fake.requests[0].params.kwargs
    assert sent == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": 3,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "max_tokens": 5,
        "logprobs": 2,
        "stop_token_ids": [fake.eos_id],
        "detokenize": False,
        "output_kind": DELTA,
    }  # no stop strings: openft cuts them itself
    assert [c.finish_reason for c in result.choices] == ["length", "length"]
    options = fake.engines[0].options
    assert options["dtype"] == "bfloat16" and options["enable_lora"] is True
    assert options["logprobs_mode"] == "raw_logprobs" and options["max_logprobs"] == 20
    assert options["gpu_memory_utilization"] == pytest.approx(0.45)  # 0.9 over max_models=2


def test_without_logprobs_none_are_asked(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    result = engine.chat(base, MESSAGES, GenerationParams(max_tokens=4))
    assert fake.requests[0].params.logprobs is None
    assert result.choices[0].logprobs is None


def test_logprobs_are_converted_with_the_vocabulary(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget, tokenizer: PreTrainedTokenizerBase
) -> None:
    result = engine.chat(base, MESSAGES, GenerationParams(max_tokens=50, logprobs=True, top_logprobs=2))
    vocab = TokenVocabulary(tokenizer)
    entries = result.choices[0].logprobs
    script = fake.script_ids(0)
    assert entries is not None and len(entries) == len(script)  # the end-of-sequence token is not reported
    for entry, token_id in zip(entries, script, strict=True):
        assert entry.token == vocab.token_text(token_id)
        assert entry.bytes == list(vocab.token_bytes(token_id))
        # The sampled token vLLM adds beside the top k is not one of them; the k are most likely first.
        assert [t.token for t in entry.top_logprobs] == [vocab.token_text(10), vocab.token_text(11)]
        assert [t.logprob for t in entry.top_logprobs] == [-0.25, -0.5]
        assert entry.logprob == (-2.0 if token_id not in (10, 11) else -0.25 * (token_id - 9))


def test_greedy_with_n_generates_once_and_copies(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    result = engine.chat(base, MESSAGES, GenerationParams(temperature=0, n=3, max_tokens=50))
    assert fake.requests[0].params.n == 1  # vLLM refuses n > 1 when greedy
    assert len({c.text for c in result.choices}) == 1 and len(result.choices) == 3
    assert result.completion_tokens == 3 * (len(fake.script_ids(0)) + 1)


def test_n_choices_each_get_their_own_sequence(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    fake.texts = ["Hello world.", "Answer: yes.", "Answer: no."]
    result = engine.chat(base, MESSAGES, GenerationParams(n=3, max_tokens=50))
    assert [c.text for c in result.choices] == [text_of(fake.tokenizer, t) for t in fake.texts]


def test_stop_strings_cut_the_text_and_end_the_vllm_request(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget
) -> None:
    fake.chunk = 1
    params = GenerationParams(max_tokens=50, stop=["France"])
    deltas = read_all(engine.stream_chat(base, MESSAGES, params))
    choice = collect(iter(deltas), 1, False)[0]
    assert choice.text == "The capital of "
    assert choice.finish_reason == "stop"
    assert all("F" not in d.text for d in deltas)  # the held-back start of the stop string never went out
    request = fake.requests[0]
    assert fake.engines[0].aborted == [request.request_id]  # vLLM stops generating what would be thrown away


def test_max_tokens_end_with_length(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    result = engine.chat(base, MESSAGES, GenerationParams(max_tokens=3))
    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 3


# Models and adapters -------------------------------------------------------------------------------------


def test_each_adapter_is_a_lora_request_with_a_stable_id(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget
) -> None:
    params = GenerationParams(max_tokens=4)
    for target in (lora_a, base, lora_b, lora_a):
        engine.chat(target, MESSAGES, params)
    loras = [r.lora for r in fake.requests]
    assert loras[1] is None
    first, second, again = loras[0], loras[2], loras[3]
    assert first is not None and second is not None
    assert again == first
    assert first.lora_int_id != second.lora_int_id
    assert first.lora_path == str(lora_a.adapter_path.resolve())  # type: ignore[union-attr]
    assert second.lora_path == str(lora_b.adapter_path.resolve())  # type: ignore[union-attr]
    assert first.lora_name != second.lora_name
    assert len(fake.engines) == 1  # adapters ride on their base's engine
    options = fake.engines[0].options
    assert options["model"] == str(base.base_path.resolve())
    assert options["max_loras"] == 8 and options["max_lora_rank"] == 64
    assert engine.stats()["adapters_loaded"] == 2


def test_a_full_fine_tune_is_its_own_engine(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget, full_a: ModelTarget
) -> None:
    engine.chat(base, MESSAGES, GenerationParams(max_tokens=4))
    engine.chat(full_a, MESSAGES, GenerationParams(max_tokens=4))
    assert [e.options["model"] for e in fake.engines] == [
        str(base.base_path.resolve()),
        str(full_a.full_model_path.resolve()),  # type: ignore[union-attr]
    ]
    assert fake.engines[1].options["tokenizer"] == str(base.base_path)  # merged_a has no tokenizer of its own
    stats = engine.stats()
    assert (stats["bases_loaded"], stats["full_models_loaded"], stats["models_evicted"]) == (1, 1, 0)


def test_beyond_max_models_the_idle_engine_is_shut_down(fake: FakeVllm, base: ModelTarget, full_a: ModelTarget) -> None:
    vllm = VllmEngine(api=fake.api, max_models=1)
    try:
        vllm.chat(base, MESSAGES, GenerationParams(max_tokens=4))
        vllm.chat(full_a, MESSAGES, GenerationParams(max_tokens=4))
        assert [e.shut_down for e in fake.engines] == [True, False]
        assert vllm.stats()["models_evicted"] == 1
        assert fake.engines[1].options["gpu_memory_utilization"] == pytest.approx(0.9)
    finally:
        vllm.close()
    assert fake.engines[1].shut_down


def test_unload(engine: VllmEngine, fake: FakeVllm, base: ModelTarget, lora_a: ModelTarget, adapter_b: Path) -> None:
    engine.chat(lora_a, MESSAGES, GenerationParams(max_tokens=4))
    assert engine.unload(adapter_b) is False
    assert engine.unload(lora_a.adapter_path) is True  # type: ignore[arg-type]
    assert engine.unload(base.base_path) is True
    assert fake.engines[0].shut_down
    assert engine.stats()["bases_loaded"] == 0
    engine.chat(base, MESSAGES, GenerationParams(max_tokens=4))
    assert len(fake.engines) == 2  # started again


def test_an_adapter_above_the_engines_rank_is_refused(
    fake: FakeVllm, base: ModelTarget, adapter_a: Path, tmp_path: Path
) -> None:
    wide = Path(shutil.copytree(adapter_a, tmp_path / "wide"))
    config = json.loads((wide / "adapter_config.json").read_text())
    (wide / "adapter_config.json").write_text(json.dumps({**config, "r": 16}))
    vllm = VllmEngine(api=fake.api, max_lora_rank=8)
    try:
        assert vllm.chat(ModelTarget(base.base_path, adapter_path=adapter_a), MESSAGES, GenerationParams(max_tokens=2))
        with pytest.raises(InvalidRequest, match="max_lora_rank") as caught:
            vllm.chat(ModelTarget(base.base_path, adapter_path=wide), MESSAGES, GenerationParams(max_tokens=2))
        assert caught.value.param == "model"
        assert vllm.waiting(base) == 0
    finally:
        vllm.close()


def test_the_first_adapter_raises_the_engines_rank(
    fake: FakeVllm, base: ModelTarget, adapter_a: Path, tmp_path: Path
) -> None:
    wide = Path(shutil.copytree(adapter_a, tmp_path / "wide"))
    config = json.loads((wide / "adapter_config.json").read_text())
    (wide / "adapter_config.json").write_text(json.dumps({**config, "r": 100}))
    vllm = VllmEngine(api=fake.api)
    try:
        vllm.chat(ModelTarget(base.base_path, adapter_path=wide), MESSAGES, GenerationParams(max_tokens=2))
        assert fake.engines[0].options["max_lora_rank"] == 128  # the next size vLLM accepts
    finally:
        vllm.close()


def test_missing_folders_are_model_not_found(engine: VllmEngine, base: ModelTarget, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        engine.chat(ModelTarget(tmp_path), MESSAGES, GenerationParams())
    with pytest.raises(ModelNotFound):
        engine.chat(ModelTarget(base.base_path, adapter_path=tmp_path), MESSAGES, GenerationParams())


# Cancellation and failures ---------------------------------------------------------------------------------


def test_closing_a_stream_aborts_the_vllm_request(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    fake.texts = ["Hello world. " * 50]
    fake.chunk, fake.delay = 1, 0.02
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(max_tokens=400))
    first = next(stream)
    assert first.text
    stream.close()
    end = stream.finished.result(timeout=5)
    assert end.cancelled and end.error is None
    request = fake.requests[0]
    assert fake.engines[0].aborted == [request.request_id]
    assert request.done.wait(5)  # vLLM's output stream was closed too
    assert 0 < end.completion_tokens < 100


def test_cancel_while_the_engine_starts(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    fake.start_gate.clear()
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(max_tokens=4))
    try:
        assert engine.waiting(base) == 1
        stream.cancel()
        with pytest.raises(GenerationCancelled):
            stream.started.result(timeout=5)
        assert engine.waiting(base) == 0
    finally:
        fake.start_gate.set()
    assert engine.chat(base, MESSAGES, GenerationParams(max_tokens=4)).choices[0].finish_reason == "length"


def test_a_vllm_refusal_fails_the_start(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    fake.refuse = ValueError("The decoder prompt is longer than the maximum model length")
    stream = engine.stream_chat(base, MESSAGES, GenerationParams(max_tokens=4))
    with pytest.raises(ValueError, match="maximum model length"):
        stream.started.result(timeout=5)
    with pytest.raises(ValueError):
        list(stream)
    assert engine.waiting(base) == 0


def test_request_errors_raise_before_any_stream(engine: VllmEngine, fake: FakeVllm, base: ModelTarget) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine.stream_chat(base, MESSAGES, GenerationParams(tool_choice="required"))
    assert caught.value.param == "tool_choice"
    with pytest.raises(InvalidRequest):
        engine.stream_chat(base, [{"role": "user", "content": [{"type": "image_url"}]}], GenerationParams())
    assert fake.requests == []


# JSON and tool calls ---------------------------------------------------------------------------------------


def test_json_object_uses_structured_outputs_and_ends_at_the_closing_brace(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget
) -> None:
    fake.texts = ['{"name": "Paris"} and more text']
    fake.chunk = 1
    result = engine.chat(base, MESSAGES, GenerationParams(max_tokens=60, json_object=True))
    assert fake.requests[0].params.structured_outputs == Params(json_object=True)
    text = result.choices[0].text
    assert text is not None and json.loads(text) == {"name": "Paris"}
    assert result.choices[0].finish_reason == "stop"
    assert fake.engines[0].aborted == [fake.requests[0].request_id]


def test_a_token_openfts_json_rule_refuses_ends_the_choice(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget
) -> None:
    fake.texts = ["Paris"]  # a grammar would never allow this: the rule is checked anyway
    result = engine.chat(base, MESSAGES, GenerationParams(max_tokens=20, json_object=True))
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].text == ""


def test_without_structured_outputs_json_and_forced_calls_are_refused(
    tokenizer: PreTrainedTokenizerBase, base: ModelTarget
) -> None:
    fake = FakeVllm(tokenizer, structured=False)
    vllm = VllmEngine(api=fake.api)
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    try:
        with pytest.raises(InvalidRequest) as caught:
            vllm.chat(base, MESSAGES, GenerationParams(json_object=True))
        assert caught.value.param == "response_format"
        with pytest.raises(InvalidRequest) as caught:
            vllm.chat(base, MESSAGES, GenerationParams(tool_choice="required"), tools)
        assert caught.value.param == "tool_choice"
        assert vllm.chat(base, MESSAGES, GenerationParams(max_tokens=3), tools).choices  # "auto" needs no grammar
    finally:
        vllm.close()
    assert fake.requests[-1].params.kwargs.get("structured_outputs") is None


def test_a_forced_tool_call_is_generated_under_a_schema(fake: FakeVllm, hermes_dir: Path) -> None:
    vllm = VllmEngine(api=fake.api)
    target = ModelTarget(hermes_dir)
    tools = [
        {"type": "function", "function": {"name": "get_weather"}},
        {"type": "function", "function": {"name": "get_time"}},
    ]
    fake.texts = ['{"name": "get_weather", "arguments": {"city": "Paris"}}']
    try:
        params = GenerationParams(max_tokens=80, tool_choice={"type": "function", "function": {"name": "get_weather"}})
        result = vllm.chat(target, MESSAGES, params, tools)
        required = vllm.chat(target, MESSAGES, GenerationParams(max_tokens=80, tool_choice="required"), tools)
    finally:
        vllm.close()
    tokenizer = AutoTokenizer.from_pretrained(hermes_dir)
    tag_ids = tokenizer("<tool_call>\n", add_special_tokens=False)["input_ids"]
    prompt = render_prompt(tokenizer, MESSAGES, tools)
    assert fake.requests[0].prompt_token_ids == [*prompt, *tag_ids]  # the tag is forced; the object is not
    schema = fake.requests[0].params.structured_outputs.json
    assert schema["properties"]["name"] == {"type": "string", "enum": ["get_weather"]}
    assert fake.requests[1].params.structured_outputs.json["properties"]["name"]["enum"] == ["get_time", "get_weather"]
    for reply in (result, required):
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.tool_calls is not None and len(choice.tool_calls) == 1
        assert choice.tool_calls[0].name == "get_weather"
        assert json.loads(choice.tool_calls[0].arguments) == {"city": "Paris"}
        assert choice.text is None


# Choosing the engine -----------------------------------------------------------------------------------------


@dataclass
class Made:
    calls: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self


def test_choose_engine() -> None:
    yes: Callable[[], bool] = lambda: True  # noqa: E731
    no: Callable[[], bool] = lambda: False  # noqa: E731
    made = Made()  # stands in for VllmEngine: only how it is called is checked
    assert choose_engine("auto", has_vllm=yes, has_cuda=yes, make_vllm=made, max_adapters=3) is made
    assert made.calls == [{"max_loras": 3}]
    assert choose_engine("vllm", has_vllm=yes, has_cuda=no, make_vllm=made) is made  # asked for: no GPU check
    for has_vllm, has_cuda in ((no, yes), (yes, no), (no, no)):
        own = choose_engine("auto", has_vllm=has_vllm, has_cuda=has_cuda, make_vllm=made, max_adapters=2)
        try:
            assert isinstance(own, InferenceEngine)
        finally:
            own.close()
    assert len(made.calls) == 2
    with pytest.raises(RuntimeError, match=r"pip install 'openft\[vllm\]'"):
        choose_engine("vllm", has_vllm=no, make_vllm=made)
    with pytest.raises(ValueError):
        choose_engine("tgi", make_vllm=made)
    assert VLLM_MISSING.endswith("pip install 'openft[vllm]'")


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_without_vllm() -> None:
    assert vllm_available() is False
    with pytest.raises(RuntimeError, match=r"pip install 'openft\[vllm\]'"):
        load_vllm_api()
    with pytest.raises(RuntimeError, match=r"pip install 'openft\[vllm\]'"):
        VllmEngine()
    own = choose_engine("auto")
    try:
        assert isinstance(own, InferenceEngine)
    finally:
        own.close()


def test_a_forced_opening_that_fills_max_tokens_ends_without_asking_vllm(fake: FakeVllm, hermes_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(hermes_dir)
    assert len(tokenizer("<tool_call>\n", add_special_tokens=False)["input_ids"]) > 1
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    vllm = VllmEngine(api=fake.api)
    try:
        result = vllm.chat(
            ModelTarget(hermes_dir), MESSAGES, GenerationParams(max_tokens=1, tool_choice="required"), tools
        )
    finally:
        vllm.close()
    assert result.choices[0].finish_reason == "length"
    assert fake.requests == []


def test_stop_ids_without_a_generation_config(fake: FakeVllm, base_dir: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(base_dir, tmp_path / "model"))
    (folder / "generation_config.json").unlink()
    vllm = VllmEngine(api=fake.api)
    try:
        result = vllm.chat(ModelTarget(folder), MESSAGES, GenerationParams(max_tokens=50))
    finally:
        vllm.close()
    assert fake.requests[0].params.stop_token_ids == [fake.eos_id]  # from the model's config
    assert result.choices[0].finish_reason == "stop"


def test_requests_from_many_threads_at_once(
    engine: VllmEngine, fake: FakeVllm, base: ModelTarget, lora_a: ModelTarget
) -> None:
    fake.chunk, fake.delay = 1, 0.001
    expected = text_of(fake.tokenizer, fake.texts[0])
    targets = [base, lora_a] * 6
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        results = list(pool.map(lambda t: engine.chat(t, MESSAGES, GenerationParams(max_tokens=60)), targets))
    assert [r.choices[0].text for r in results] == [expected] * len(targets)
    assert len(fake.engines) == 1 and len(fake.requests) == len(targets)
    assert engine.waiting(base) == 0
