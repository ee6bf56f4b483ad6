"""InferenceEngine on the tiny model: decoding, adapters and their isolation, limits, concurrency."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.errors import ContextLengthExceeded, InvalidRequest
from openft.inference import GenerationChoice, GenerationParams, GenerationResult, InferenceEngine, ModelTarget
from openft.inference.prompt import render_prompt

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = GenerationParams(temperature=0, max_tokens=24)


def hf_greedy_ids(target: ModelTarget, messages: list[dict], max_new_tokens: int) -> list[int]:
    """Reference greedy token ids from `transformers`' own `generate`."""
    tokenizer = AutoTokenizer.from_pretrained(target.base_path)
    model = AutoModelForCausalLM.from_pretrained(target.weights_path).eval()
    if target.adapter_path is not None:
        model = PeftModel.from_pretrained(model, target.adapter_path)
    prompt = torch.tensor([render_prompt(tokenizer, messages)])
    with torch.no_grad():
        output = model.generate(input_ids=prompt, max_new_tokens=max_new_tokens, do_sample=False)
    return output[0, prompt.shape[1] :].tolist()


def text_of(result: GenerationResult) -> str:
    assert len(result.choices) == 1
    return result.choices[0].text


# Decoding -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("target_name", ["base", "lora_a"])
def test_greedy_matches_transformers_generate(request: pytest.FixtureRequest, target_name: str) -> None:
    target: ModelTarget = request.getfixturevalue(target_name)
    expected_ids = hf_greedy_ids(target, MESSAGES, 24)
    assert AutoTokenizer.from_pretrained(target.base_path).eos_token_id not in expected_ids  # so: "length"
    tokenizer = AutoTokenizer.from_pretrained(target.base_path)
    result = InferenceEngine().chat(target, MESSAGES, GREEDY)
    assert result == GenerationResult(
        choices=[
            GenerationChoice(text=tokenizer.decode(expected_ids, skip_special_tokens=True), finish_reason="length")
        ],
        prompt_tokens=len(render_prompt(tokenizer, MESSAGES)),
        completion_tokens=24,
    )


def test_temperature_zero_is_deterministic(base: ModelTarget) -> None:
    engine = InferenceEngine()
    assert engine.chat(base, MESSAGES, GREEDY) == engine.chat(base, MESSAGES, GREEDY)


def test_same_seed_same_text_and_different_seed_different_text(base: ModelTarget) -> None:
    engine = InferenceEngine()

    def sample(seed: int) -> list[str]:
        params = GenerationParams(temperature=1.0, max_tokens=16, n=2, seed=seed)
        return [choice.text for choice in engine.chat(base, MESSAGES, params).choices]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7) != [text_of(engine.chat(base, MESSAGES, GREEDY))[:16]] * 2


def test_sampling_leaves_the_global_rng_alone(base: ModelTarget) -> None:
    engine = InferenceEngine()
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    engine.chat(base, MESSAGES, GenerationParams(temperature=1.0, max_tokens=8, seed=5))
    engine.chat(base, MESSAGES, GenerationParams(temperature=1.0, max_tokens=8))
    assert torch.equal(torch.rand(4), expected)


def test_tiny_top_p_is_greedy(base: ModelTarget) -> None:
    engine = InferenceEngine()
    nucleus = GenerationParams(temperature=1.5, top_p=1e-6, max_tokens=24, seed=1)
    assert engine.chat(base, MESSAGES, nucleus) == engine.chat(base, MESSAGES, GREEDY)


def test_n_choices(base: ModelTarget) -> None:
    engine = InferenceEngine()
    greedy = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=6, n=2))
    assert [c.text for c in greedy.choices] == [
        text_of(engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=6)))
    ] * 2
    assert greedy.completion_tokens == 12
    sampled = engine.chat(base, MESSAGES, GenerationParams(temperature=1.0, max_tokens=6, n=3, seed=0))
    assert len(sampled.choices) == 3
    assert len({c.text for c in sampled.choices}) == 3


def test_max_tokens_ends_with_length(base: ModelTarget) -> None:
    result = InferenceEngine().chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=5))
    assert result.choices[0].finish_reason == "length"
    assert result.completion_tokens == 5
    assert text_of(InferenceEngine().chat(base, MESSAGES, GREEDY)).startswith(result.choices[0].text)


def _ascii_window(text: str, width: int, after: int) -> str:
    """Plain ASCII (no half-decoded bytes that could shift) first found in `text` at or after `after`."""
    for start in range(after, len(text) - width):
        window = text[start : start + width]
        if window.isascii() and window.isprintable() and text.find(window) == start:
            return window
    raise AssertionError(f"no ASCII window in {text!r}")


def test_stop_string_ends_the_text_before_it(base: ModelTarget) -> None:
    engine = InferenceEngine()
    full = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=40))
    full_text = text_of(full)
    stop = _ascii_window(full_text, 2, after=len(full_text) // 3)
    params = GenerationParams(temperature=0, max_tokens=40, stop=["never appears", stop, ""])
    result = engine.chat(base, MESSAGES, params)
    assert result.choices == [GenerationChoice(text=full_text[: full_text.find(stop)], finish_reason="stop")]
    assert result.completion_tokens < full.completion_tokens


def test_earliest_stop_string_wins(base: ModelTarget) -> None:
    engine = InferenceEngine()
    full_text = text_of(engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=40)))
    early = _ascii_window(full_text, 2, after=len(full_text) // 3)
    late = _ascii_window(full_text, 2, after=full_text.find(early) + 2)
    result = engine.chat(base, MESSAGES, GenerationParams(temperature=0, max_tokens=40, stop=[late, early]))
    assert text_of(result) == full_text[: full_text.find(early)]


def test_end_of_sequence_token_stops_and_is_not_in_the_text(base: ModelTarget, tmp_path: Path) -> None:
    """Makes the 5th greedy token an end-of-sequence id through generation_config.json."""
    ids = hf_greedy_ids(base, MESSAGES, 5)
    folder = Path(shutil.copytree(base.base_path, tmp_path / "model"))
    config_path = folder / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], ids[4]]
    config_path.write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids_before_eos = ids[: ids.index(ids[4])]
    result = InferenceEngine().chat(ModelTarget(base_path=folder), MESSAGES, GREEDY)
    assert result.choices == [
        GenerationChoice(text=tokenizer.decode(ids_before_eos, skip_special_tokens=True), finish_reason="stop")
    ]
    assert result.completion_tokens == len(ids_before_eos) + 1


def test_content_parts_are_joined_text(base: ModelTarget) -> None:
    engine = InferenceEngine()
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    joined = [{"role": "user", "content": "Hello\nthere"}]
    assert engine.chat(base, parts, GREEDY) == engine.chat(base, joined, GREEDY)
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    with pytest.raises(InvalidRequest) as info:
        engine.chat(base, image, GREEDY)
    assert info.value.param == "messages"


# Context ------------------------------------------------------------------------------------------


def _messages_with_prompt_tokens(base: ModelTarget, low: int, high: int) -> tuple[list[dict], int]:
    tokenizer = AutoTokenizer.from_pretrained(base.base_path)
    for repeats in range(1, 1000):
        messages = [{"role": "user", "content": "The capital of France is Paris. " * repeats}]
        length = len(render_prompt(tokenizer, messages))
        if low <= length <= high:
            return messages, length
    raise AssertionError("no prompt length in range")


def test_prompt_filling_the_context_is_refused(base: ModelTarget) -> None:
    messages, _ = _messages_with_prompt_tokens(base, 512, 600)
    with pytest.raises(ContextLengthExceeded) as info:
        InferenceEngine().chat(base, messages, GREEDY)
    assert info.value.param == "messages"
    assert info.value.code == "context_length_exceeded"
    assert "512" in info.value.message


def test_max_tokens_is_capped_by_the_room_left(base: ModelTarget) -> None:
    messages, prompt_tokens = _messages_with_prompt_tokens(base, 500, 509)
    result = InferenceEngine().chat(base, messages, GenerationParams(temperature=0, max_tokens=100))
    assert result.prompt_tokens == prompt_tokens
    assert result.completion_tokens == 512 - prompt_tokens
    assert result.choices[0].finish_reason == "length"


def test_context_length(base: ModelTarget, lora_a: ModelTarget, full_a: ModelTarget) -> None:
    engine = InferenceEngine()
    assert [engine.context_length(t) for t in (base, lora_a, full_a)] == [512, 512, 512]


# Adapters and full models -------------------------------------------------------------------------


def test_adapter_changes_the_answer_and_leaves_the_base_untouched(
    base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget
) -> None:
    engine = InferenceEngine()
    base_before = engine.chat(base, MESSAGES, GREEDY)
    with_a = engine.chat(lora_a, MESSAGES, GREEDY)
    with_b = engine.chat(lora_b, MESSAGES, GREEDY)
    base_after = engine.chat(base, MESSAGES, GREEDY)
    assert len({text_of(base_before), text_of(with_a), text_of(with_b)}) == 3
    assert base_after == base_before
    assert engine.chat(lora_a, MESSAGES, GREEDY) == with_a


def test_evicted_adapter_is_reloaded_with_the_same_answer(lora_a: ModelTarget, lora_b: ModelTarget) -> None:
    engine = InferenceEngine(max_adapters=1)
    first_a = engine.chat(lora_a, MESSAGES, GREEDY)
    first_b = engine.chat(lora_b, MESSAGES, GREEDY)  # evicts A
    assert engine.chat(lora_a, MESSAGES, GREEDY) == first_a  # reloads A, evicts B
    assert engine.chat(lora_b, MESSAGES, GREEDY) == first_b
    assert first_a != first_b


def test_full_model_answers_like_the_adapter_it_was_merged_from(
    lora_a: ModelTarget, full_a: ModelTarget, base: ModelTarget
) -> None:
    engine = InferenceEngine()
    assert text_of(engine.chat(full_a, MESSAGES, GREEDY)) == text_of(engine.chat(lora_a, MESSAGES, GREEDY))
    assert engine.chat(base, MESSAGES, GREEDY) != engine.chat(full_a, MESSAGES, GREEDY)


def test_concurrent_requests_match_their_answers_alone(
    base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget, full_a: ModelTarget
) -> None:
    seeded = GenerationParams(temperature=1.0, max_tokens=12, n=2, seed=3)
    requests = [(base, GREEDY), (lora_a, GREEDY), (lora_b, seeded), (base, seeded), (full_a, GREEDY), (lora_a, seeded)]
    alone = InferenceEngine()
    expected = [alone.chat(target, MESSAGES, params) for target, params in requests]

    engine = InferenceEngine(max_adapters=1)  # A and B keep evicting each other as well
    work = requests * 4
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda job: engine.chat(job[0], MESSAGES, job[1]), work))
    assert results == expected * 4


# Parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.1}, "top_p"),
        ({"n": 0}, "n"),
    ],
)
def test_invalid_params_are_refused(kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        GenerationParams(**kwargs)
    assert info.value.param == param
