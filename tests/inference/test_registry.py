"""ModelRegistry: one copy of each base, however many adapters and threads use it."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from openft.inference import GenerationParams, InferenceEngine, ModelTarget
from openft.inference import registry as registry_module
from openft.inference.registry import ModelRegistry, context_length_of, estimate_model_bytes, module_bytes


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


def counts(stats: dict[str, int]) -> dict[str, int]:
    return {key: stats[key] for key in ("bases_loaded", "full_models_loaded", "adapters_loaded")}


def loaded_adapter_names(registry: ModelRegistry, target: ModelTarget) -> set[str]:
    with registry.use(ModelTarget(base_path=target.base_path, full_model_path=target.full_model_path)):
        return {path.name for path in registry.loaded_adapters(target.weights_path)}


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
    assert counts(engine.stats()) == {"bases_loaded": 1, "full_models_loaded": 1, "adapters_loaded": 2}


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
    assert counts(engine.stats()) == {"bases_loaded": 1, "full_models_loaded": 1, "adapters_loaded": 0}
    assert engine.stats()["adapter_bytes"] == 0
    assert engine.unload(adapter_a) is False
    assert engine.chat(lora_a, MESSAGES, GREEDY) == expected  # loaded again
    assert engine.unload(merged_a) is True
    assert engine.unload(base_dir) is True
    assert counts(engine.stats()) == {"bases_loaded": 0, "full_models_loaded": 0, "adapters_loaded": 0}
    assert engine.stats()["memory_bytes"] == 0
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


# One memory budget over every loaded model (bases, full fine-tunes, checkpoints) and adapter -------------


@pytest.fixture(scope="module")
def checkpoint_b(base_dir: Path, adapter_b: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full fine-tune's checkpoint: adapter B merged into the base, where the trainer keeps checkpoints."""
    dest = tmp_path_factory.mktemp("job") / "checkpoints" / "step_000002" / "model"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_b)
    model.merge_and_unload().save_pretrained(dest)
    return dest


def model_bytes_of(target: ModelTarget) -> int:
    with ModelRegistry(max_adapters=1).use(target) as active:
        return module_bytes(active.model)


def test_estimate_before_loading_matches_the_loaded_model(base: ModelTarget, base_dir: Path) -> None:
    measured = model_bytes_of(base)
    estimate = estimate_model_bytes(base_dir)
    assert 0.95 * measured <= estimate <= measured  # only non-persistent buffers (rotary frequencies) are missing


def test_least_recently_used_model_is_unloaded_and_its_memory_released(
    base: ModelTarget, full_a: ModelTarget, checkpoint_b: Path, base_dir: Path
) -> None:
    one = model_bytes_of(base)
    registry = ModelRegistry(max_adapters=4, max_model_bytes=int(2.5 * one))  # room for two models
    checkpoint = ModelTarget(base_path=base.base_path, full_model_path=checkpoint_b)
    with registry.use(base) as active:
        first = weakref.ref(active.model)
        del active
    with registry.use(full_a):
        pass
    assert registry.stats()["models_evicted"] == 0 and registry.stats()["model_bytes"] == 2 * one
    with registry.use(checkpoint):
        pass
    stats = registry.stats()
    assert counts(stats) == {"bases_loaded": 0, "full_models_loaded": 2, "adapters_loaded": 0}
    assert stats["models_evicted"] == 1 and stats["memory_bytes"] == stats["model_bytes"] == 2 * one
    assert registry.loaded_models() == [full_a.weights_path.resolve(), checkpoint_b.resolve()]
    gc.collect()
    assert first() is None  # nothing holds the base's weights any more
    with registry.use(base):  # used again: loaded again, and now the full fine-tune is the oldest
        pass
    assert registry.loaded_models() == [checkpoint_b.resolve(), base_dir.resolve()]


def test_a_model_in_use_is_never_unloaded(base: ModelTarget, full_a: ModelTarget, checkpoint_b: Path) -> None:
    one = model_bytes_of(base)
    registry = ModelRegistry(max_adapters=4, max_model_bytes=int(1.5 * one))  # room for one model
    checkpoint = ModelTarget(base_path=base.base_path, full_model_path=checkpoint_b)
    expected = InferenceEngine().chat(base, MESSAGES, GREEDY)
    with registry.use(base):
        with registry.use(full_a):
            pass
        with registry.use(checkpoint):  # the base is the least recently used, but busy: the full model goes
            pass
        assert registry.stats()["models_evicted"] == 1
        assert registry.loaded_models() == [base.weights_path.resolve(), checkpoint_b.resolve()]
    # once given back, the budget holds again: the base (least recently used) goes, the checkpoint stays
    assert registry.loaded_models() == [checkpoint_b.resolve()]
    engine = InferenceEngine(max_model_bytes=int(1.5 * one))
    engine.chat(full_a, MESSAGES, GREEDY)
    assert engine.chat(base, MESSAGES, GREEDY) == expected  # the base again, in the full model's place
    assert counts(engine.stats()) == {"bases_loaded": 1, "full_models_loaded": 0, "adapters_loaded": 0}


def test_a_model_larger_than_the_budget_is_served_alone(
    base: ModelTarget, lora_a: ModelTarget, full_a: ModelTarget
) -> None:
    alone = InferenceEngine()
    expected = {t: alone.chat(t, MESSAGES, GREEDY) for t in (base, lora_a, full_a)}
    engine = InferenceEngine(max_model_bytes=1)
    for target in (base, full_a, lora_a, full_a):
        assert engine.chat(target, MESSAGES, GREEDY) == expected[target]
        assert engine.stats()["bases_loaded"] + engine.stats()["full_models_loaded"] == 1
    assert engine.stats()["models_evicted"] == 3


def test_adapters_count_in_the_memory_budget(base: ModelTarget, lora_a: ModelTarget, full_a: ModelTarget) -> None:
    one = model_bytes_of(base)
    engine = InferenceEngine(max_model_bytes=2 * one)  # two models, but not two models and an adapter
    engine.chat(lora_a, MESSAGES, GREEDY)
    stats = engine.stats()
    assert stats["memory_bytes"] == stats["model_bytes"] + stats["adapter_bytes"] and stats["adapter_bytes"] > 0
    engine.chat(full_a, MESSAGES, GREEDY)  # 2 models + 1 adapter > budget: the base goes, with its adapter
    assert counts(engine.stats()) == {"bases_loaded": 0, "full_models_loaded": 1, "adapters_loaded": 0}
