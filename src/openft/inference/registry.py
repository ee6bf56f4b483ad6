"""Loaded models: one copy of each base in memory, with LoRA adapters swapped in and out on top of it.

Each base (or full fine-tuned model) is a slot with its own lock. A request holds that lock from
choosing its adapter until its last token, so no request ever runs with another request's adapter
active; requests on different bases run in parallel. Loading happens lazily, under the slot's lock,
so a base is loaded once even when its first requests arrive together.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from openft.inference.types import ModelTarget

_LOAD_LOCK = threading.Lock()
"""Serialises every model and adapter load in the process. While `from_pretrained` runs, transformers
patches process-wide state (`PreTrainedModel.tie_weights`, the default dtype, `torch.linspace`) and
restores it afterwards; two loads at once can restore each other's patch and leave tied weights on the
meta device ("Cannot copy out of meta tensor"). Always taken after a slot's lock, never before."""

_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


@dataclass(frozen=True)
class ActiveModel:
    """A model ready to run with the request's adapter active; valid only inside `ModelRegistry.use`."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    context_length: int | None
    stop_token_ids: frozenset[int]


class ModelRegistry:
    """Owns every loaded model; keeps at most `max_adapters` adapters per base (least recently used go)."""

    def __init__(self, max_adapters: int):
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        self._max_adapters = max_adapters
        self._slots: dict[Path, _Slot] = {}
        self._slots_lock = threading.Lock()

    @contextmanager
    def use(self, target: ModelTarget) -> Iterator[ActiveModel]:
        """Hold the target's base exclusively, with the target's adapter (or none) active."""
        slot = self._slot(target)
        with slot.lock, slot.activate(target.adapter_path) as active:
            yield active

    def _slot(self, target: ModelTarget) -> _Slot:
        key = target.weights_path.resolve()
        with self._slots_lock:
            if key not in self._slots:
                self._slots[key] = _Slot(target, self._max_adapters)
            return self._slots[key]


def context_length_of(config: PretrainedConfig) -> int | None:
    """The model's context window from its config (architectures name it differently); None if unknown."""
    for name in _CONTEXT_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def read_context_length(target: ModelTarget) -> int | None:
    """Like `context_length_of`, from the config file alone (no weights are loaded)."""
    return context_length_of(AutoConfig.from_pretrained(target.weights_path))


class _Slot:
    """One set of base weights in memory (fp32, CPU, eval mode) and the adapters loaded onto it.

    Every method expects the caller to hold `lock`.
    """

    def __init__(self, target: ModelTarget, max_adapters: int):
        self.lock = threading.Lock()
        self._weights_path = target.weights_path
        self._tokenizer_path = _tokenizer_folder(target)
        self._max_adapters = max_adapters
        self._loaded: ActiveModel | None = None  # its model becomes a PeftModel once an adapter is loaded
        self._adapters: OrderedDict[Path, str] = OrderedDict()  # folder → peft adapter name, oldest first
        self._adapters_loaded = 0

    @contextmanager
    def activate(self, adapter_path: Path | None) -> Iterator[ActiveModel]:
        loaded = self._load()
        if adapter_path is not None:
            yield self._with_adapter(loaded, adapter_path)
        elif isinstance(loaded.model, PeftModel):
            # The LoRA layers live inside the base's modules; disabling them gives back the exact base.
            with loaded.model.disable_adapter():
                yield loaded
        else:
            yield loaded

    def _load(self) -> ActiveModel:
        if self._loaded is None:
            with _LOAD_LOCK:
                model = AutoModelForCausalLM.from_pretrained(self._weights_path, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
            model.eval().requires_grad_(False)
            self._loaded = ActiveModel(
                model=model,
                tokenizer=tokenizer,
                context_length=context_length_of(model.config),
                stop_token_ids=_stop_token_ids(model, tokenizer),
            )
        return self._loaded

    def _with_adapter(self, loaded: ActiveModel, path: Path) -> ActiveModel:
        """Make the adapter at `path` the active one, loading it (and evicting the oldest) if needed."""
        key = path.resolve()
        model = loaded.model
        if key in self._adapters:
            self._adapters.move_to_end(key)
        else:
            name = f"adapter{self._adapters_loaded}"  # peft names must not contain dots, so not the path
            self._adapters_loaded += 1
            with _LOAD_LOCK:
                if isinstance(model, PeftModel):
                    model.load_adapter(key, adapter_name=name)
                else:
                    model = PeftModel.from_pretrained(model, key, adapter_name=name)
                    self._loaded = loaded = replace(loaded, model=model)
            self._adapters[key] = name
        assert isinstance(model, PeftModel)
        model.set_adapter(self._adapters[key], inference_mode=True)
        while len(self._adapters) > self._max_adapters:  # after set_adapter: the active one is never evicted
            _, evicted = self._adapters.popitem(last=False)
            model.delete_adapter(evicted)
        return loaded


def _tokenizer_folder(target: ModelTarget) -> Path:
    """A full fine-tune may ship its own tokenizer (e.g. a changed chat template); adapters use the base's."""
    if target.full_model_path is not None and (target.full_model_path / "tokenizer_config.json").is_file():
        return target.full_model_path
    return target.base_path


def _stop_token_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End-of-sequence ids from the generation config (chat models often list several) and the tokenizer."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)
