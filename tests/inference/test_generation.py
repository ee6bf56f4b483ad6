"""Request features on the tiny model: penalties, logprobs, json_object, tool calls, legacy completions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.errors import ContextLengthExceeded, InvalidRequest
from openft.inference import GenerationParams, InferenceEngine, ModelTarget, ToolCall
from openft.inference.json_prefix import JsonObjectPrefix
from openft.inference.prompt import render_prompt
from openft.inference.tokens import TokenVocabulary

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine()


# Penalties ----------------------------------------------------------------------------------------


def test_penalties_follow_openais_formula(base: ModelTarget, engine: InferenceEngine) -> None:
    """Greedy ids with penalties equal a reference loop: logit[t] -= presence·[count>0] + frequency·count."""
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    model = AutoModelForCausalLM.from_pretrained(base.base_path).eval()
    prompt = render_prompt(tokenizer, MESSAGES)
    presence, frequency = 0.7, 1.3
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(12):
            logits = model(input_ids=torch.tensor([prompt + expected])).logits[0, -1]
            counts = Counter(expected)
            for token_id, count in counts.items():
                logits[token_id] -= presence + frequency * count
            expected.append(int(logits.argmax()))
    params = GenerationParams(temperature=0, max_tokens=12, presence_penalty=presence, frequency_penalty=frequency)
    result = engine.chat(base, MESSAGES, params)
    assert result.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)


def test_penalties_reduce_and_negative_ones_increase_repetition(base: ModelTarget, engine: InferenceEngine) -> None:
    def repeats(**penalties: float) -> int:
        params = GenerationParams(temperature=0, max_tokens=40, logprobs=True, **penalties)
        tokens = [t.token for t in engine.chat(base, MESSAGES, params).choices[0].logprobs or []]
        return len(tokens) - len(set(tokens))

    plain = repeats()
    assert repeats(frequency_penalty=2.0) < plain
    assert repeats(presence_penalty=2.0) < plain
    assert repeats(presence_penalty=-2.0) > plain


# Logprobs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_the_log_softmax_of_the_models_logits(
    base: ModelTarget, engine: InferenceEngine, temperature: float
) -> None:
    """Before temperature: the same values whatever the sampling settings."""
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    model = AutoModelForCausalLM.from_pretrained(base.base_path).eval()
    vocab = TokenVocabulary(tokenizer)
    id_of = {vocab.token_bytes(i): i for i in range(len(tokenizer))}
    params = GenerationParams(temperature=temperature, max_tokens=8, seed=3, logprobs=True, top_logprobs=5)
    choice = engine.chat(base, MESSAGES, params).choices[0]
    assert choice.logprobs is not None and len(choice.logprobs) == 8
    ids = render_prompt(tokenizer, MESSAGES)
    for entry in choice.logprobs:
        with torch.no_grad():
            expected = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), dim=-1)
        token_id = id_of[bytes(entry.bytes)]
        assert entry.logprob == pytest.approx(float(expected[token_id]), abs=1e-4)
        values = [t.logprob for t in entry.top_logprobs]
        assert values == pytest.approx(expected.topk(5).values.tolist(), abs=1e-4)  # 5 of them, sorted
        assert [id_of[bytes(t.bytes)] for t in entry.top_logprobs] == expected.topk(5).indices.tolist()
        if temperature == 0:
            assert entry.top_logprobs[0].token == entry.token
        ids.append(token_id)


def test_logprob_tokens_and_bytes_rebuild_the_text(base: ModelTarget, engine: InferenceEngine) -> None:
    choice = engine.chat(base, MESSAGES, GenerationParams(temperature=1, seed=5, max_tokens=30, logprobs=True)).choices[
        0
    ]
    assert choice.logprobs is not None
    assert b"".join(bytes(t.bytes) for t in choice.logprobs).decode("utf-8", errors="replace") == choice.text
    assert all(t.top_logprobs == [] for t in choice.logprobs)
    for entry in choice.logprobs:
        if entry.token.startswith("bytes:"):
            assert entry.token == "bytes:" + "".join(f"\\x{b:02x}" for b in entry.bytes)
        else:
            assert entry.token.encode() == bytes(entry.bytes)


def test_no_logprobs_unless_asked(base: ModelTarget, engine: InferenceEngine) -> None:
    assert engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=3)).choices[0].logprobs is None


# json_object --------------------------------------------------------------------------------------


def test_json_object_on_the_random_tiny_model_keeps_its_promise(base: ModelTarget, engine: InferenceEngine) -> None:
    """ "stop" → one complete JSON object; "length" → a valid unfinished prefix. Both happen here."""
    reasons = set()
    for seed in range(8):
        params = GenerationParams(temperature=1.0, max_tokens=40, seed=seed, json_object=True)
        choice = engine.chat(base, MESSAGES, params).choices[0]
        assert choice.text is not None and choice.text.startswith("{")
        reasons.add(choice.finish_reason)
        if choice.finish_reason == "stop":
            assert isinstance(json.loads(choice.text), dict)
        else:
            ok, closed_at = JsonObjectPrefix().feed(choice.text)
            assert ok and closed_at is None
    assert reasons == {"stop", "length"}


def test_json_object_ends_when_the_object_closes(scripted: Any, base: ModelTarget) -> None:
    engine = scripted('{"city": "Paris", "n": [1, 2.5, true, null]}\nHope that helps!')
    result = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=60, json_object=True))
    assert result.choices[0].text == '{"city": "Paris", "n": [1, 2.5, true, null]}'
    assert result.choices[0].finish_reason == "stop"
    free = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=60))
    assert free.choices[0].text == '{"city": "Paris", "n": [1, 2.5, true, null]}\nHope that helps!'


def test_json_object_refuses_text_before_the_object_and_an_early_end(scripted: Any, base: ModelTarget) -> None:
    engine = scripted('Sure! {"a": ')  # then end-of-sequence, which must not end an open object
    params = GenerationParams(temperature=0, max_tokens=30, json_object=True)
    text = engine.chat(base, MESSAGES, params).choices[0].text
    assert text is not None and text.startswith("{")
    ok, _ = JsonObjectPrefix().feed(text)
    assert ok


# Tools --------------------------------------------------------------------------------------------

CALL_LINE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
PARIS = ToolCall(id="", name="get_weather", arguments='{"city": "Paris"}')


def calls_of(calls: list[ToolCall] | None) -> list[tuple[str, str]]:
    assert calls is not None
    assert all(call.id.startswith("call_") and len(call.id) > 10 for call in calls)
    return [(call.name, call.arguments) for call in calls]


def test_tool_calls_in_the_trainers_json_line_format(scripted: Any, base: ModelTarget) -> None:
    engine = scripted(f'Let me check.\n{CALL_LINE}\n{{"name": "get_time", "arguments": {{}}}}')
    choice = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=80), tools=TOOLS).choices[0]
    assert choice.text == "Let me check."
    assert calls_of(choice.tool_calls) == [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    assert choice.finish_reason == "tool_calls"
    assert len({call.id for call in choice.tool_calls or []}) == 2


def test_tool_calls_in_hermes_format(scripted: Any, hermes_dir: Path) -> None:
    engine = scripted(f"<tool_call>\n{CALL_LINE}\n</tool_call>")
    target = ModelTarget(base_path=hermes_dir)
    choice = engine.chat(target, MESSAGES, GenerationParams(temperature=0, max_tokens=80), tools=TOOLS).choices[0]
    assert choice.text is None
    assert calls_of(choice.tool_calls) == [("get_weather", '{"city": "Paris"}')]
    assert choice.finish_reason == "tool_calls"


def test_calls_to_unknown_functions_and_replies_without_tools_stay_text(scripted: Any, base: ModelTarget) -> None:
    engine = scripted('{"name": "launch_rocket", "arguments": {}}')
    params = GenerationParams(temperature=0, max_tokens=40)
    choice = engine.chat(base, MESSAGES, params, tools=TOOLS).choices[0]
    assert (choice.text, choice.tool_calls, choice.finish_reason) == (
        '{"name": "launch_rocket", "arguments": {}}',
        None,
        "stop",
    )
    engine = scripted(CALL_LINE)
    choice = engine.chat(base, MESSAGES, params).choices[0]  # no tools: nothing is parsed
    assert (choice.text, choice.tool_calls, choice.finish_reason) == (CALL_LINE, None, "stop")


def test_tool_choice_none_hides_the_tools_and_parses_nothing(scripted: Any, hermes_dir: Path) -> None:
    engine = scripted(CALL_LINE)
    target = ModelTarget(base_path=hermes_dir)
    params = GenerationParams(temperature=0, max_tokens=40, tool_choice="none")
    result = engine.chat(target, MESSAGES, params, tools=TOOLS)
    assert (result.choices[0].text, result.choices[0].tool_calls) == (CALL_LINE, None)
    assert result.choices[0].finish_reason == "stop"
    without_tools = engine.chat(target, MESSAGES, GenerationParams(temperature=0, max_tokens=1))
    with_tools = engine.chat(target, MESSAGES, GenerationParams(temperature=0, max_tokens=1), tools=TOOLS)
    assert result.prompt_tokens == without_tools.prompt_tokens < with_tools.prompt_tokens


def test_named_tool_choice_forces_a_call_to_that_function(scripted: Any, base: ModelTarget) -> None:
    engine = scripted('"city": "Paris"}}\nDone.')  # the model only has to fill in the arguments
    params = GenerationParams(
        temperature=0, max_tokens=40, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    )
    result = engine.chat(base, MESSAGES, params, tools=TOOLS)
    choice = result.choices[0]
    assert (choice.text, choice.finish_reason) == (None, "tool_calls")
    assert calls_of(choice.tool_calls) == [("get_weather", '{"city": "Paris"}')]


def test_required_tool_choice_opens_a_call_in_the_models_format(scripted: Any, hermes_dir: Path) -> None:
    engine = scripted('get_time", "arguments": {}}\n</tool_call>')
    target = ModelTarget(base_path=hermes_dir)
    params = GenerationParams(temperature=0, max_tokens=40, tool_choice="required")
    choice = engine.chat(target, MESSAGES, params, tools=TOOLS).choices[0]
    assert calls_of(choice.tool_calls) == [("get_time", "{}")]
    assert choice.finish_reason == "tool_calls"


def test_required_tool_choice_on_the_random_model_gives_a_call_or_a_cut_prefix(
    base: ModelTarget, engine: InferenceEngine
) -> None:
    params = GenerationParams(temperature=0, max_tokens=30, tool_choice="required")
    choice = engine.chat(base, MESSAGES, params, tools=TOOLS[:1]).choices[0]  # one tool: its name is forced
    if choice.finish_reason == "tool_calls":
        assert [call.name for call in choice.tool_calls or []] == ["get_weather"]
        assert isinstance(json.loads((choice.tool_calls or [])[0].arguments), dict)
    else:
        assert choice.finish_reason == "length"
        assert (choice.text or "").startswith('{"name": "get_weather", "arguments": {')


@pytest.mark.parametrize(
    ("tools", "tool_choice", "param"),
    [
        (None, "required", "tool_choice"),
        (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([{"type": "function"}], "auto", "tools"),
        (["get_weather"], None, "tools"),
    ],
)
def test_bad_tools_are_refused(
    base: ModelTarget, engine: InferenceEngine, tools: Any, tool_choice: Any, param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        engine.chat(base, MESSAGES, GenerationParams(max_tokens=2, tool_choice=tool_choice), tools=tools)
    assert info.value.param == param


def test_history_tool_calls_are_rendered_like_the_trainer_does(base: ModelTarget) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "user", "content": "ok"},
    ]
    assert CALL_LINE in tokenizer.decode(render_prompt(tokenizer, messages))


# Legacy completions -------------------------------------------------------------------------------


def test_complete_continues_the_raw_prompt_like_transformers(base: ModelTarget, engine: InferenceEngine) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    model = AutoModelForCausalLM.from_pretrained(base.base_path).eval()
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    expected = model.generate(input_ids=ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
    result = engine.complete(base, prompt, GenerationParams(temperature=0, max_tokens=10))
    assert result.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)
    assert result.prompt_tokens == ids.shape[1]
    echoed = engine.complete(base, prompt, GenerationParams(temperature=0, max_tokens=10), echo=True)
    assert echoed.choices[0].text == prompt + result.choices[0].text
    assert (echoed.prompt_tokens, echoed.completion_tokens) == (result.prompt_tokens, result.completion_tokens)


def test_complete_refuses_a_prompt_that_fills_the_context(base: ModelTarget, engine: InferenceEngine) -> None:
    with pytest.raises(ContextLengthExceeded) as info:
        engine.complete(base, "Paris " * 600, GenerationParams(max_tokens=2))
    assert info.value.param == "prompt"


# Parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"n": 129}, "n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
    ],
)
def test_invalid_new_params_are_refused(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerationParams(**kwargs)
    assert info.value.param == param


def test_valid_edge_params_are_accepted() -> None:
    GenerationParams(presence_penalty=-2, frequency_penalty=2, temperature=2, logprobs=True, top_logprobs=20)
    GenerationParams(tool_choice={"type": "function", "function": {"name": "f"}})
