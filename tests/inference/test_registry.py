"""ModelRegistry: one copy of each base, however many adapters and threads use it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
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


# Adapter cache: count and bytes over all bases, unload, stats ---------------------------------------

MESSAGES = [{"role": "user", "content": "hi"}]
GREEDY = GenerationParams(temperature=0, max_tokens=6)


def loaded_adapter_names(registry: ModelRegistry, target: ModelTarget) -> set[str]:
    with registry.use(ModelTarget(base_path=target.base_path, full_model_path=target.full_model_path)) as active:
        config = getattr(active.model, "peft_config", {})
        return set(config)


def test_adapters_are_bounded_by_count_over_all_bases(
    base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget, full_a: ModelTarget
) -> None:
    a_on_full = replace(lora_a, full_model_path=full_a.full_model_path)
    alone = InferenceEngine()
    expected = {t: alone.chat(t, MESSAGES, GREEDY) for t in (lora_a, lora_b, a_on_full)}
    engine = InferenceEngine(max_adapters=2)
    for target in (lora_a, lora_b, a_on_full, lora_a, a_on_full, lora_b):
        assert engine.chat(target, MESSAGES, GREEDY) == expected[target]
        assert engine.stats()["adapters_loaded"] <= 2
    assert engine.stats() == {
        "bases_loaded": 1,
        "full_models_loaded": 1,
        "adapters_loaded": 2,
        "adapter_bytes": engine.stats()["adapter_bytes"],
    }


def test_adapters_are_bounded_by_bytes(lora_a: ModelTarget, lora_b: ModelTarget, base: ModelTarget) -> None:
    engine = InferenceEngine()
    engine.chat(lora_a, MESSAGES, GREEDY)
    one = engine.stats()["adapter_bytes"]
    assert one > 0
    engine.chat(lora_b, MESSAGES, GREEDY)
    assert engine.stats()["adapter_bytes"] == 2 * one  # same shapes

    bounded = InferenceEngine(max_adapters=10, max_adapter_bytes=int(1.5 * one))
    first_a = bounded.chat(lora_a, MESSAGES, GREEDY)
    bounded.chat(lora_b, MESSAGES, GREEDY)
    assert bounded.stats()["adapters_loaded"] == 1 and bounded.stats()["adapter_bytes"] == one
    assert bounded.chat(lora_a, MESSAGES, GREEDY) == first_a  # reloaded
    assert bounded.chat(base, MESSAGES, GREEDY) == engine.chat(base, MESSAGES, GREEDY)
    # An adapter larger than the whole budget is still served (then evicted by the next one).
    tiny_budget = InferenceEngine(max_adapter_bytes=1)
    assert tiny_budget.chat(lora_a, MESSAGES, GREEDY) == first_a
    assert tiny_budget.stats()["adapters_loaded"] == 1


def test_eviction_on_a_busy_base_waits_for_its_request(
    lora_a: ModelTarget, lora_b: ModelTarget, full_a: ModelTarget
) -> None:
    """Never blocks on another base's lock: the adapter goes when that base's request releases it."""
    registry = ModelRegistry(max_adapters=1)
    b_on_full = replace(lora_b, full_model_path=full_a.full_model_path)
    with registry.use(b_on_full):
        done = threading.Event()

        def load_a() -> None:
            with registry.use(lora_a):
                done.set()

        worker = threading.Thread(target=load_a)
        worker.start()
        assert done.wait(10)  # it did not wait for the busy full model
        worker.join()
        assert registry.stats()["adapters_loaded"] == 1
    assert loaded_adapter_names(registry, full_a) == set()  # deleted on release
    assert len(loaded_adapter_names(registry, lora_a)) == 1


def test_unload_adapter_and_models(
    base: ModelTarget, lora_a: ModelTarget, full_a: ModelTarget, adapter_a: Path, base_dir: Path, merged_a: Path
) -> None:
    engine = InferenceEngine()
    expected = engine.chat(lora_a, MESSAGES, GREEDY)
    engine.chat(full_a, MESSAGES, GREEDY)
    assert engine.stats()["adapters_loaded"] == 1
    assert engine.unload(adapter_a) is True
    assert engine.stats() == {"bases_loaded": 1, "full_models_loaded": 1, "adapters_loaded": 0, "adapter_bytes": 0}
    assert engine.unload(adapter_a) is False
    assert engine.chat(lora_a, MESSAGES, GREEDY) == expected  # loaded again
    assert engine.unload(merged_a) is True
    assert engine.unload(base_dir) is True
    assert engine.stats() == {"bases_loaded": 0, "full_models_loaded": 0, "adapters_loaded": 0, "adapter_bytes": 0}
    assert engine.unload(base_dir) is False
    assert engine.chat(lora_a, MESSAGES, GREEDY) == expected


def test_unload_waits_for_the_request_using_it(base: ModelTarget, base_dir: Path) -> None:
    registry = ModelRegistry(max_adapters=1)
    order = []
    with registry.use(base):
        worker = threading.Thread(target=lambda: order.append(("unloaded", registry.unload(base_dir))))
        worker.start()
        time.sleep(0.2)
        order.append(("request done", None))
    worker.join(10)
    assert order == [("request done", None), ("unloaded", True)]
    assert registry.stats()["bases_loaded"] == 0


def test_concurrent_requests_with_a_tight_cache_stay_isolated(
    base: ModelTarget, lora_a: ModelTarget, lora_b: ModelTarget, full_a: ModelTarget
) -> None:
    a_on_full = replace(lora_a, full_model_path=full_a.full_model_path)
    targets = [base, lora_a, lora_b, full_a, a_on_full]
    alone = InferenceEngine()
    expected = [alone.chat(t, MESSAGES, GREEDY) for t in targets]
    engine = InferenceEngine(max_adapters=1)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(lambda t: engine.chat(t, MESSAGES, GREEDY), targets * 4))
    assert results == expected * 4
    assert engine.stats()["adapters_loaded"] <= 1
