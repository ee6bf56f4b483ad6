"""Loaded models: one copy of each base in memory, with LoRA adapters swapped in and out on top of it.

Each base (or full fine-tuned model) is a slot with its own lock. A request holds that lock (a
`Lease`) from choosing its adapter until its last token, so no request ever runs with another
request's adapter active; requests on different bases run in parallel. Loading happens lazily, under
the slot's lock, so a base is loaded once even when its first requests arrive together.

All of a base's torch work (loading, adapter switches, every generation, streamed or not) runs on that
base's own thread (`Lease.run`/`Lease.submit`). With libgomp, each thread that runs torch ops gets its
own OpenMP team, and once the process has more team threads than cores every parallel op pays for it:
measured on SmolLM2-135M (2 cores), a forward pass got ~15% slower for good as soon as a second thread
had run one. The HTTP layer calls from many pool threads, so without this every request could add a
team. Requests on one base are serialized by its lock anyway, so one thread per base costs nothing.

Adapters are kept in one least-recently-used order across all bases, bounded by count and by the
bytes of their weights. Evicting an adapter needs its base's lock; when another request holds it, the
adapter is only marked, and deleted when that request releases the base (or the next one takes it).
So a base's lock is never awaited while another is held, and the bounds can be exceeded only by
adapters whose base is busy at that moment.

Whole models (bases, full fine-tunes, checkpoints' full weights) are bounded too, by memory: one
least-recently-used order over every loaded model, and a byte budget (`max_model_bytes`) that counts each
model's parameters and buffers plus the weights of every loaded adapter. Before a model is loaded (from
its safetensors headers), after it is loaded (measured), after an adapter is loaded and whenever a
request gives a model back, the least recently used models are unloaded, with their adapters, until the
total fits. Never the most recently used one, and never one a request holds (its lock is taken without
waiting, so a busy model is skipped and goes when it is released, if still over): a model larger than the
whole budget is still served, alone, and the budget is exceeded only while requests hold what is over it.
"""

from __future__ import annotations

import gc
import json
import math
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTuner
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from openft.errors import ModelNotFound
from openft.inference.tokens import TokenVocabulary
from openft.inference.types import ModelTarget

_LOAD_LOCK = threading.Lock()
"""Serialises every model and adapter load in the process. While `from_pretrained` runs, transformers
patches process-wide state (`PreTrainedModel.tie_weights`, the default dtype, `torch.linspace`) and
restores it afterwards; two loads at once can restore each other's patch and leave tied weights on the
meta device ("Cannot copy out of meta tensor"). Always taken after a slot's lock, never before."""

T = TypeVar("T")

_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_LOADED_DTYPE_BYTES = 4
"""Models are loaded in fp32 whatever their files hold."""
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class ActiveModel:
    """A model ready to run with the request's adapter active; valid only while its lease is held."""

    model: Any
    """A transformers model, or a PEFT model around one (which forwards what it lacks to the model inside):
    Any, because neither library's annotations cover that pairing (torch types their attributes as Tensor)."""
    tokenizer: PreTrainedTokenizerBase
    context_length: int | None
    stop_token_ids: frozenset[int]
    vocab: TokenVocabulary


class Lease:
    """Exclusive use of one base with the request's adapter active, until `release()`.

    May be released from another thread than the one that acquired it (a stream's generation thread
    does), which is why the slot lock is a plain `threading.Lock`, not an RLock.
    """

    def __init__(self, active: ActiveModel, on_release: ExitStack, worker: ThreadPoolExecutor):
        self.active = active
        self._on_release = on_release
        self._worker = worker
        self._released = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` on the base's own thread (see the module docstring)."""
        return self._worker.submit(fn, *args)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`submit` and wait for the result (or the exception)."""
        return self.submit(fn, *args).result()

    def release(self) -> None:
        """Give the base back (idempotent)."""
        if not self._released:
            self._released = True
            self._on_release.close()


class ModelRegistry:
    """Owns every loaded model and adapter (see the module docstring for the eviction rules)."""

    def __init__(self, max_adapters: int, max_adapter_bytes: int | None = None, max_model_bytes: int | None = None):
        """`max_model_bytes`: memory budget of loaded models and adapters together (see the module docstring);
        None: no budget."""
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        if max_adapter_bytes is not None and max_adapter_bytes < 0:
            raise ValueError("max_adapter_bytes must not be negative")
        if max_model_bytes is not None and max_model_bytes < 0:
            raise ValueError("max_model_bytes must not be negative")
        self._max_adapters = max_adapters
        self._max_adapter_bytes = max_adapter_bytes
        self._max_model_bytes = max_model_bytes
        self._lock = threading.Lock()  # guards the dicts below and every slot's `doomed`; held only briefly
        self._slots: OrderedDict[Path, _Slot] = OrderedDict()  # least recently used first
        self._lru: OrderedDict[tuple[Path, Path], int] = OrderedDict()  # (slot, adapter) → bytes, oldest first
        self._lru_bytes = 0
        self._models_evicted = 0

    @contextmanager
    def use(self, target: ModelTarget) -> Iterator[ActiveModel]:
        """Hold the target's base exclusively, with the target's adapter (or none) active."""
        lease = self.acquire(target)
        try:
            yield lease.active
        finally:
            lease.release()

    def acquire(self, target: ModelTarget) -> Lease:
        """Wait for the target's base, load what is missing, and activate the target's adapter.

        Raises ModelNotFound when a folder holds no model or adapter (the base is released then).
        """
        if not (target.weights_path / "config.json").is_file():
            raise ModelNotFound("The model's weights are missing on this server.", param="model")
        if target.adapter_path is not None and not (target.adapter_path / "adapter_config.json").is_file():
            raise ModelNotFound("The model's adapter is missing on this server.", param="model")
        slot = self._locked_slot(target)
        release = ExitStack()
        release.callback(self._shrink)  # runs last: a model that was busy during a shrink may go now
        release.callback(slot.lock.release)
        release.callback(self._delete_doomed, slot)  # adapters evicted while this request ran
        try:
            active = slot.worker.submit(self._activate, slot, target).result()
        except BaseException:
            release.close()
            raise
        return Lease(active, release, slot.worker)

    def _activate(self, slot: _Slot, target: ModelTarget) -> ActiveModel:
        """On the slot's thread, with its lock held: load what is missing, activate the target's adapter."""
        self._delete_doomed(slot)
        if slot.loaded is None:
            self._shrink(incoming=estimate_model_bytes(slot.weights_path))  # make room before, not after
        active = slot.load()
        if target.adapter_path is not None:
            active = self._activate_adapter(slot, active, target.adapter_path.resolve())
        elif isinstance(active.model, PeftModel) and slot.lora_enabled:
            # The LoRA layers live inside the base's modules; disabling them gives back the exact base. They
            # stay disabled until an adapter request: toggling per request (PEFT's `disable_adapter()`)
            # walks every module twice, ~15 ms a request on SmolLM2-135M.
            _lora_tuner(active.model).disable_adapter_layers()
            slot.lora_enabled = False
        self._shrink()
        return active

    def unload(self, path: Path) -> bool:
        """Drop a base or full model (with its adapters), or an adapter, from memory; False if not loaded.

        Waits for the request using it to finish. A later request for it loads it again.
        """
        key = path.resolve()
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._detach(slot)
            holders = []
            for slot_key, adapter_key in [e for e in self._lru if e[1] == key]:
                self._forget(slot_key, adapter_key)
                holders.append(self._slots[slot_key])
                self._slots[slot_key].doomed.add(key)
        for holder in holders:
            with holder.lock:
                self._delete_doomed(holder)
        found = bool(holders)
        if slot is not None:
            with slot.lock:
                found = found or slot.loaded is not None
                slot.close()
            gc.collect()  # PEFT wrappers hold reference cycles; free the weights now, not at some later GC
        return found

    def stats(self) -> dict[str, int]:
        """What is in memory: loaded bases and full models, adapters and the bytes of their weights, the
        bytes the memory budget counts (`memory_bytes`: models and adapters) and how many models it unloaded."""
        with self._lock:
            loaded = [slot for slot in self._slots.values() if slot.loaded is not None]
            return {
                "bases_loaded": sum(not slot.full_model for slot in loaded),
                "full_models_loaded": sum(slot.full_model for slot in loaded),
                "adapters_loaded": len(self._lru),
                "adapter_bytes": self._lru_bytes,
                "model_bytes": sum(slot.model_bytes for slot in loaded),
                "memory_bytes": self._memory_bytes(),
                "models_evicted": self._models_evicted,
            }

    def loaded_models(self) -> list[Path]:
        """The folders of the loaded models (bases and full models), least recently used first."""
        with self._lock:
            return [key for key, slot in self._slots.items() if slot.loaded is not None]

    # Internals ---------------------------------------------------------------------------------------

    def _locked_slot(self, target: ModelTarget) -> _Slot:
        """The target's slot, with its lock held (retrying if it was unloaded while we waited)."""
        key = target.weights_path.resolve()
        while True:
            with self._lock:
                slot = self._slots.get(key)
                if slot is None:
                    slot = self._slots[key] = _Slot(key, target)
            slot.lock.acquire()
            with self._lock:
                if not slot.detached:
                    self._slots.move_to_end(key)  # the most recently used: the last to be unloaded
                    return slot
            slot.lock.release()

    def _detach(self, slot: _Slot) -> None:
        """Take the slot out of the registry (its adapters are no longer counted, nor can new ones be);
        the caller holds the registry's lock and then closes the slot."""
        slot.detached = True
        self._slots.pop(slot.key, None)
        for entry in [e for e in self._lru if e[0] == slot.key]:
            self._forget(*entry)

    def _memory_bytes(self) -> int:
        """What the memory budget counts; the caller holds the registry's lock."""
        return sum(slot.model_bytes for slot in self._slots.values() if slot.loaded is not None) + self._lru_bytes

    def _shrink(self, incoming: int = 0) -> None:
        """Unload least recently used idle models until the loaded ones and `incoming` more bytes fit the budget.

        Never the most recently used model, nor one whose lock is held (a request uses it, or it is being
        loaded): that lock is only tried, so no lock is ever awaited here.
        """
        if self._max_model_bytes is None:
            return
        victims: list[_Slot] = []
        with self._lock:
            for slot in list(self._slots.values())[:-1]:
                if self._memory_bytes() + incoming <= self._max_model_bytes:
                    break
                if slot.loaded is None or not slot.lock.acquire(blocking=False):
                    continue
                self._detach(slot)
                self._models_evicted += 1
                victims.append(slot)
        for slot in victims:
            slot.close()
            slot.lock.release()  # a request waiting for it finds it detached and loads a fresh copy
        if victims:
            gc.collect()  # PEFT wrappers hold reference cycles; free the weights now, not at some later GC

    def _activate_adapter(self, slot: _Slot, active: ActiveModel, key: Path) -> ActiveModel:
        """Make the adapter at `key` the active one, loading it (and evicting old ones) if needed."""
        entry = (slot.key, key)
        if key not in slot.adapters:
            active = slot.load_adapter(key)
            with self._lock:
                self._remember(slot, key)
        else:
            with self._lock:
                if key in slot.doomed:  # marked for eviction, but used again before it went
                    slot.doomed.discard(key)
                    self._remember(slot, key)
                elif entry in self._lru:
                    self._lru.move_to_end(entry)
        model, name = active.model, slot.adapters[key][0]
        assert isinstance(model, PeftModel)
        if not slot.lora_enabled:
            _lora_tuner(model).enable_adapter_layers()
            slot.lora_enabled = True
        if model.active_adapters != [name]:  # set_adapter walks every module: skip it when nothing changes
            model.set_adapter(name, inference_mode=True)
        self._evict(keep=entry, current=slot)
        return active

    def _evict(self, *, keep: tuple[Path, Path], current: _Slot) -> None:
        """Mark least recently used adapters (never `keep`) until the bounds hold, and delete those whose
        base is free now; the others go when their base is released."""
        affected: dict[Path, _Slot] = {}
        with self._lock:
            for entry in list(self._lru):
                if not self._over_bounds():
                    break
                if entry == keep:
                    continue
                self._forget(*entry)
                affected[entry[0]] = self._slots[entry[0]]
                affected[entry[0]].doomed.add(entry[1])
        for slot in affected.values():
            if slot is current:
                self._delete_doomed(slot)
            elif slot.lock.acquire(blocking=False):
                try:
                    self._delete_doomed(slot)
                finally:
                    slot.lock.release()

    def _over_bounds(self) -> bool:
        too_big = self._max_adapter_bytes is not None and self._lru_bytes > self._max_adapter_bytes
        return len(self._lru) > self._max_adapters or too_big

    def _remember(self, slot: _Slot, adapter_key: Path) -> None:
        if slot.detached:
            return  # the base was unloaded meanwhile: its adapters go with it
        entry, size = (slot.key, adapter_key), slot.adapters[adapter_key][1]
        self._lru[entry] = size
        self._lru_bytes += size

    def _forget(self, slot_key: Path, adapter_key: Path) -> None:
        self._lru_bytes -= self._lru.pop((slot_key, adapter_key))

    def _delete_doomed(self, slot: _Slot) -> None:
        """Delete the slot's adapters marked for eviction; the caller holds the slot's lock."""
        with self._lock:
            doomed, slot.doomed = slot.doomed, set()
        for key in doomed:
            slot.delete_adapter(key)


def module_bytes(module: torch.nn.Module) -> int:
    """Memory of a module's parameters and buffers (tied weights counted once)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_model_bytes(folder: Path) -> int:
    """What loading the model in `folder` will take, before loading it: the tensors its safetensors headers
    list, in fp32 (a few small reads, no weights). Without safetensors, the size of its PyTorch files. 0 when
    nothing can be read (the measurement after loading then decides)."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as file:
                (length,) = struct.unpack("<Q", file.read(8))
                if length > _MAX_SAFETENSORS_HEADER:
                    continue
                header = json.loads(file.read(length))
        except (OSError, ValueError, struct.error):
            continue
        for name, entry in header.items() if isinstance(header, dict) else ():
            if name != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("shape"), list):
                total += math.prod(entry["shape"]) * _LOADED_DTYPE_BYTES
    if total == 0:
        total = sum(path.stat().st_size for path in folder.glob("*.bin") if path.is_file())
    return total


def default_max_model_bytes() -> int:
    """Half of this machine's memory, or of the container's limit (cgroup) when that is lower.

    Models live in the server's own memory, beside the API and the trainers' processes; half leaves the rest
    room, and follows the machine instead of a fixed figure that is too much for a laptop and too little for
    a server.
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total // 2


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

    Every method expects the caller to hold `lock`; `doomed` is guarded by the registry's lock.
    """

    def __init__(self, key: Path, target: ModelTarget):
        self.key = key
        self.lock = threading.Lock()
        self.full_model = target.full_model_path is not None
        self.detached = False  # unloaded: no longer in the registry (set under the registry's lock)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"openft-{key.name}")
        self.loaded: ActiveModel | None = None  # its model becomes a PeftModel once an adapter is loaded
        self.adapters: dict[Path, tuple[str, int]] = {}  # folder → (peft adapter name, bytes of its weights)
        self.doomed: set[Path] = set()
        self.lora_enabled = True  # PEFT's LoRA layers on; off while serving the plain base (see `_activate`)
        self.weights_path = target.weights_path
        self.model_bytes = 0  # parameters and buffers of the loaded model (its adapters are counted apart)
        self._tokenizer_path = _tokenizer_folder(target)
        self._adapters_loaded = 0

    def load(self) -> ActiveModel:
        if self.loaded is None:
            _refuse_custom_code(self.weights_path)
            with _LOAD_LOCK:
                # Never run code shipped with a model (`auto_map` in its config): only transformers' own classes.
                model = AutoModelForCausalLM.from_pretrained(
                    self.weights_path, dtype=torch.float32, trust_remote_code=False
                )
                tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path, trust_remote_code=False)
            model.eval().requires_grad_(False)
            self.model_bytes = module_bytes(model)
            self.loaded = ActiveModel(
                model=model,
                tokenizer=tokenizer,
                context_length=context_length_of(model.config),
                stop_token_ids=_stop_token_ids(model, tokenizer),
                vocab=TokenVocabulary(tokenizer),
            )
        return self.loaded

    def load_adapter(self, key: Path) -> ActiveModel:
        loaded = self.load()
        model = loaded.model
        name = f"adapter{self._adapters_loaded}"  # peft names must not contain dots, so not the path
        self._adapters_loaded += 1
        with _LOAD_LOCK:
            if isinstance(model, PeftModel):
                model.load_adapter(key, adapter_name=name)
            else:
                model = PeftModel.from_pretrained(model, key, adapter_name=name)
                self.loaded = loaded = replace(loaded, model=model)
        model.requires_grad_(False)
        size = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if f".{name}." in n)
        self.adapters[key] = (name, size)
        return loaded

    def delete_adapter(self, key: Path) -> None:
        entry = self.adapters.pop(key, None)
        if entry is None or self.loaded is None:
            return
        model = self.loaded.model
        assert isinstance(model, PeftModel)
        if not self.adapters:
            # PEFT cannot run with no adapter at all; taking the LoRA layers out gives back the plain base.
            self.loaded = replace(self.loaded, model=model.unload())
            self.lora_enabled = True  # as a new PeftModel starts
            return
        if entry[0] in model.active_adapters:
            model.set_adapter(next(iter(self.adapters.values()))[0])
        model.delete_adapter(entry[0])

    def close(self) -> None:
        """Forget the model: its memory goes once no request holds it any more."""
        self.loaded = None
        self.adapters.clear()
        self.worker.shutdown(wait=False)


def _refuse_custom_code(folder: Path) -> None:
    """A model whose architecture exists only as Python code shipped with it (`auto_map` naming a class for a
    `model_type` transformers does not know) cannot be loaded without running that code, which this server
    never does: say so as a 404 instead of transformers' prompt or error. Known architectures that also ship
    code load with transformers' own classes (`trust_remote_code=False`)."""
    from transformers import CONFIG_MAPPING

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # transformers says what is wrong with it
    if isinstance(config, dict) and config.get("auto_map") and config.get("model_type") not in CONFIG_MAPPING:
        raise ModelNotFound(
            "The model needs Python code of its own to load, and this server never runs a model's code.",
            param="model",
        )


def _tokenizer_folder(target: ModelTarget) -> Path:
    """A full fine-tune may ship its own tokenizer (e.g. a changed chat template); adapters use the base's."""
    if target.full_model_path is not None and (target.full_model_path / "tokenizer_config.json").is_file():
        return target.full_model_path
    return target.base_path


def _lora_tuner(model: PeftModel) -> BaseTuner:
    """The LoRA tuner a PEFT model wraps its base in (peft annotates `base_model` as any torch Module)."""
    tuner = model.base_model
    assert isinstance(tuner, BaseTuner)
    return tuner


def _stop_token_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End-of-sequence ids from the generation config (chat models often list several) and the tokenizer."""
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)
