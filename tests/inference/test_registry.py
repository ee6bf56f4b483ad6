"""ModelRegistry: one copy of each base, however many adapters and threads use it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.inference import registry as registry_module
from openft.inference.registry import ModelRegistry, context_length_of


def test_each_base_is_loaded_once(
    monkeypatch: pytest.MonkeyPatch, base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget, full_a: ModelTarget
) -> None:
    loaded: list[Any] = []
    original = registry_module.AutoModelForCausalLM.from_pretrained

    def counting_from_pretrained(path: Any, **kwargs: Any) -> Any:
        loaded.append(path)
        return original(path, **kwargs)

    monkeypatch.setattr(registry_module.AutoModelForCausalLM, "from_pretrained", counting_from_pretrained)
    engine = InferenceEngine()
    targets = [base, lora_a, lora_b, full_a] * 3
    params = GenerationParams(temperature=0, max_tokens=2)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda target: engine.chat(target, [{"role": "user", "content": "hi"}], params), targets))
    assert sorted(map(str, loaded)) == sorted([str(base.base_path), str(full_a.full_model_path)])


def test_full_model_without_tokenizer_uses_the_base_tokenizer(full_a: ModelTarget) -> None:
    assert full_a.full_model_path is not None
    assert not (full_a.full_model_path / "tokenizer_config.json").exists()
    with ModelRegistry(max_adapters=1).use(full_a) as active:
        assert active.tokenizer.convert_tokens_to_ids("<|im_end|>") in active.stop_token_ids


def test_max_adapters_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ModelRegistry(max_adapters=0)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (LlamaConfig(max_position_embeddings=77), 77),
        (GPT2Config(n_positions=64), 64),
        (PretrainedConfig(), None),
    ],
)
def test_context_length_of(config: PretrainedConfig, expected: int | None) -> None:
    assert context_length_of(config) == expected


def test_first_loads_of_different_models_at_once_do_not_corrupt_each_other(
    base: ModelTarget, full_a: ModelTarget
) -> None:
    """transformers patches process-wide state while loading; unserialised loads break tied weights."""
    messages = [{"role": "user", "content": "hi"}]
    params = GenerationParams(temperature=0, max_tokens=4)
    expected = [InferenceEngine().chat(target, messages, params) for target in (base, full_a)]
    for _ in range(6):
        fresh = InferenceEngine().chat
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(fresh, (base, full_a), [messages] * 2, [params] * 2))
        assert results == expected
