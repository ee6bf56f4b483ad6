"""Loaded models: one copy of each base in memory, its LoRA adapters in a per-row bank, one batch scheduler each.

Each base (or full fine-tuned model) is a slot with its own `BatchScheduler` and thread: every request on
that model, whatever its adapter, joins the same running batch (`openft.inference.scheduler`), and the
adapter of each row is applied per row (`openft.inference.multi_lora`). All of a model's torch work —
loading it, loading and deleting adapters, every forward pass — runs on that thread, between steps: with
libgomp each thread that runs torch ops gets its own OpenMP team, and once the process has more team
threads than cores every parallel op pays for it (measured on SmolLM2-135M, 2 cores: ~15% slower for good
once a second thread had run a forward pass).

A request holds a `Lease` from choosing its model until its last token: it counts as a user of the slot
and of its adapter, so neither is unloaded under it. Leases are shared (many requests run on one model at
once); nothing a request holds is a lock, so a slow reader never blocks another request.

Adapters are kept in one least-recently-used order across all bases, bounded by count and by the bytes of
their weights. An adapter over the bounds is marked, and deleted (on its model's thread) as soon as no
request uses it; a request that asks for it again before then takes it back. So the bounds can be exceeded
only by adapters in use at that moment.

Whole models (bases, full fine-tunes, checkpoints' full weights) are bounded too, by memory: one
least-recently-used order over every loaded model, and a byte budget (`max_model_bytes`) that counts each
model's parameters and buffers plus the weights of every loaded adapter. Before a model is loaded (from
its safetensors headers), after it is loaded (measured), after an adapter is loaded and whenever a request
gives a model back, the least recently used idle models are unloaded, with their adapters, until the total
fits. Never the most recently used one, and never one a request holds: a model larger than the whole
budget is still served, alone, and the budget is exceeded only while requests hold what is over it.

Devices: on a machine with CUDA, models load on the GPU in bf16 (SDPA attention); elsewhere on the CPU in
fp32. `OPENFT_INFERENCE_DEVICE` (`cpu`, `cuda`, `cuda:N`; the `device` argument) overrides the choice. The
model budget and the KV cache budget are per device (one device serves all models of this process).
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PretrainedConfig,
    PreTrainedTokenizerBase,
)

from openft.errors import ModelNotFound
from openft.inference.multi_lora import LoraBank
from openft.inference.scheduler import BatchScheduler
from openft.inference.tokens import TokenVocabulary
from openft.inference.types import ModelTarget

_LOAD_LOCK = threading.Lock()
"""Serialises every model and adapter load in the process. While `from_pretrained` runs, transformers
patches process-wide state (`PreTrainedModel.tie_weights`, the default dtype, `torch.linspace`) and
restores it afterwards; two loads at once can restore each other's patch and leave tied weights on the
meta device ("Cannot copy out of meta tensor")."""

_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
DEFAULT_KV_CACHE_BYTES = 2 * 1024**3
"""KV cache of one model's batch when `OPENFT_KV_CACHE_GB` is unset (per device)."""


def inference_device(chosen: str | None = None) -> torch.device:
    """Where models are served: `chosen` (`OPENFT_INFERENCE_DEVICE`), else the first GPU when CUDA works, else
    the CPU."""
    if chosen:
        return torch.device(chosen)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def inference_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU (half the memory, the GPU's native speed); fp32 on the CPU, where bf16 matmuls are slower
    on most CPUs and outputs should match what training evaluated."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model and what requests need of it; valid while a lease on it is held."""

    model: Any
    """A transformers model (Any: its forward takes keyword arguments torch's annotations do not cover)."""
    tokenizer: PreTrainedTokenizerBase
    context_length: int | None
    stop_token_ids: frozenset[int]
    vocab: TokenVocabulary
    tokenizer_lock: threading.Lock
    """Held while the tokenizer renders a prompt: fast tokenizers are not safe to call from several threads."""


class Lease:
    """A request's use of one model and adapter, until `release()` (idempotent, from any thread)."""

    def __init__(
        self, registry: ModelRegistry, slot: _Slot, active: ActiveModel, adapter: Path | None, adapter_id: int | None
    ):
        self.active = active
        self.adapter_id = adapter_id
        """The adapter's id in the model's `LoraBank`; None: the bare model."""
        self.scheduler = slot.scheduler
        self._registry, self._slot, self._adapter = registry, slot, adapter
        self._released = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._registry._release(self._slot, self._adapter)


class ModelRegistry:
    """Owns every loaded model and adapter (see the module docstring for the eviction rules)."""

    def __init__(
        self,
        max_adapters: int,
        max_adapter_bytes: int | None = None,
        max_model_bytes: int | None = None,
        kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_batch_rows: int = 64,
        device: str | None = None,
        on_step: Callable[[int], None] | None = None,
    ):
        """`max_model_bytes`: memory budget of loaded models and adapters together (see the module docstring);
        None: no budget. `kv_cache_bytes`: KV cache of each model's running batch."""
        if max_adapters < 1:
            raise ValueError("max_adapters must be at least 1")
        if max_adapter_bytes is not None and max_adapter_bytes < 0:
            raise ValueError("max_adapter_bytes must not be negative")
        if max_model_bytes is not None and max_model_bytes < 0:
            raise ValueError("max_model_bytes must not be negative")
        self._max_adapters = max_adapters
        self._max_adapter_bytes = max_adapter_bytes
        self._max_model_bytes = max_model_bytes
        self._kv_cache_bytes = kv_cache_bytes
        self._max_batch_rows = max_batch_rows
        self._on_step = on_step
        self.device = inference_device(device)
        self._lock = threading.Condition()  # guards every slot's bookkeeping; held only briefly
        self._slots: OrderedDict[Path, _Slot] = OrderedDict()  # least recently used first
        self._lru: OrderedDict[tuple[Path, Path], int] = OrderedDict()  # (slot, adapter) → bytes, oldest first
        self._lru_bytes = 0
        self._models_evicted = 0

    @contextmanager
    def use(self, target: ModelTarget) -> Iterator[ActiveModel]:
        """Hold the target's model (and adapter) while the block runs."""
        lease = self.acquire(target)
        try:
            yield lease.active
        finally:
            lease.release()

    def acquire(self, target: ModelTarget) -> Lease:
        """Load what is missing of the target (on its model's thread) and hold it.

        Raises ModelNotFound when a folder holds no model or adapter.
        """
        if not (target.weights_path / "config.json").is_file():
            raise ModelNotFound("The model's weights are missing on this server.", param="model")
        if target.adapter_path is not None and not (target.adapter_path / "adapter_config.json").is_file():
            raise ModelNotFound("The model's adapter is missing on this server.", param="model")
        adapter = target.adapter_path.resolve() if target.adapter_path is not None else None
        slot = self._held_slot(target, adapter)
        try:
            active, adapter_id = slot.scheduler.call(self._activate, slot, adapter).result()
        except BaseException:
            self._release(slot, adapter)
            raise
        return Lease(self, slot, active, adapter, adapter_id)

    def unload(self, path: Path) -> bool:
        """Drop a base or full model (with its adapters), or an adapter, from memory; False if not loaded.

        Waits for the requests using it to finish. A later request for it loads it again.
        """
        key = path.resolve()
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None:
                self._detach(slot)
            holders = []
            for slot_key, adapter_key in [e for e in self._lru if e[1] == key]:
                self._forget(slot_key, adapter_key)
                holder = self._slots[slot_key]
                holder.doomed.add(key)
                holders.append(holder)
            for holder in holders:
                while holder.adapter_users.get(key, 0) and not holder.detached:
                    self._lock.wait()
            if slot is not None:
                while slot.users:
                    self._lock.wait()
        for holder in holders:
            if not holder.detached:
                holder.scheduler.call(self._delete_doomed, holder).result()
        found = bool(holders)
        if slot is not None:
            found = found or slot.loaded is not None
            slot.close()
            gc.collect()  # free the weights now, not at some later GC
        return found

    def stats(self) -> dict[str, int]:
        """What is in memory: loaded bases and full models, adapters and the bytes of their weights, the
        bytes the memory budget counts (`memory_bytes`: models and adapters), how many models it unloaded,
        and the batches' figures summed over models (`openft.inference.scheduler.BatchScheduler.stats`)."""
        with self._lock:
            loaded = [slot for slot in self._slots.values() if slot.loaded is not None]
            totals = {
                "bases_loaded": sum(not slot.full_model for slot in loaded),
                "full_models_loaded": sum(slot.full_model for slot in loaded),
                "adapters_loaded": len(self._lru),
                "adapter_bytes": self._lru_bytes,
                "model_bytes": sum(slot.model_bytes for slot in loaded),
                "memory_bytes": self._memory_bytes(),
                "models_evicted": self._models_evicted,
            }
            schedulers = [slot.scheduler for slot in self._slots.values()]
        for scheduler in schedulers:
            for name, value in scheduler.stats().items():
                totals[name] = totals.get(name, 0) + value
        return totals

    def waiting(self, target: ModelTarget) -> int:
        """Requests on the target's model not yet admitted into its batch."""
        with self._lock:
            slot = self._slots.get(target.weights_path.resolve())
        return slot.scheduler.waiting() if slot is not None else 0

    def loaded_adapters(self, weights_path: Path) -> set[Path]:
        """The adapter folders loaded on the model at `weights_path` (marked ones not yet deleted included)."""
        with self._lock:
            slot = self._slots.get(weights_path.resolve())
            return set(slot.adapters) if slot is not None else set()

    def loaded_models(self) -> list[Path]:
        """The folders of the loaded models (bases and full models), least recently used first."""
        with self._lock:
            return [key for key, slot in self._slots.items() if slot.loaded is not None]

    def close(self) -> None:
        """Unload everything (the server is stopping)."""
        with self._lock:
            slots = list(self._slots.values())
            for slot in slots:
                self._detach(slot)
        for slot in slots:
            slot.close()

    # Internals ---------------------------------------------------------------------------------------

    def _held_slot(self, target: ModelTarget, adapter: Path | None) -> _Slot:
        """The target's slot, counted as used by one more request (so it is not unloaded meanwhile)."""
        key = target.weights_path.resolve()
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = _Slot(key, target, self)
            self._slots.move_to_end(key)  # the most recently used: the last to be unloaded
            slot.users += 1
            if adapter is not None:
                slot.adapter_users[adapter] = slot.adapter_users.get(adapter, 0) + 1
            return slot

    def _release(self, slot: _Slot, adapter: Path | None) -> None:
        delete_now = False
        with self._lock:
            slot.users -= 1
            if adapter is not None:
                slot.adapter_users[adapter] -= 1
                if not slot.adapter_users[adapter]:
                    del slot.adapter_users[adapter]
                    delete_now = adapter in slot.doomed
            self._lock.notify_all()
        if delete_now and not slot.detached:
            slot.scheduler.call(self._delete_doomed, slot)  # on its thread, between steps; not awaited
        self._shrink()

    def _activate(self, slot: _Slot, adapter: Path | None) -> tuple[ActiveModel, int | None]:
        """On the slot's thread: load what is missing, make sure the adapter is in its bank."""
        self._delete_doomed(slot)
        if slot.loaded is None:
            self._shrink(incoming=estimate_model_bytes(slot.weights_path, self.device))  # make room first
        active = slot.load()
        adapter_id = None
        if adapter is not None:
            adapter_id = self._activate_adapter(slot, adapter)
        self._shrink()
        return active, adapter_id

    def _activate_adapter(self, slot: _Slot, key: Path) -> int:
        entry = (slot.key, key)
        if key not in slot.adapters:
            slot.load_adapter(key)
            with self._lock:
                self._remember(slot, key)
        else:
            with self._lock:
                if key in slot.doomed:  # marked for eviction, but used again before it went
                    slot.doomed.discard(key)
                    self._remember(slot, key)
                elif entry in self._lru:
                    self._lru.move_to_end(entry)
        self._evict(keep=entry)
        return slot.adapters[key][0]

    def _evict(self, *, keep: tuple[Path, Path]) -> None:
        """Mark least recently used adapters (never `keep`) until the bounds hold; those no request uses are
        deleted on their model's thread, the others when their last request ends."""
        affected: set[_Slot] = set()
        with self._lock:
            for entry in list(self._lru):
                if not self._over_bounds():
                    break
                if entry == keep:
                    continue
                self._forget(*entry)
                slot = self._slots[entry[0]]
                slot.doomed.add(entry[1])
                affected.add(slot)
        for slot in affected:
            slot.scheduler.call(self._delete_doomed, slot)  # this thread's own calls run before its next step

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
        """On the slot's thread: delete its adapters marked for eviction that no request uses."""
        with self._lock:
            idle = {key for key in slot.doomed if not slot.adapter_users.get(key)}
            slot.doomed -= idle
        for key in idle:
            slot.delete_adapter(key)

    def _detach(self, slot: _Slot) -> None:
        """Take the slot out of the registry (its adapters are no longer counted, nor can new requests find
        it); the caller holds the registry's lock and later closes the slot."""
        slot.detached = True
        if self._slots.get(slot.key) is slot:
            del self._slots[slot.key]
        for entry in [e for e in self._lru if e[0] == slot.key]:
            self._forget(*entry)
        self._lock.notify_all()

    def _memory_bytes(self) -> int:
        """What the memory budget counts; the caller holds the registry's lock."""
        return sum(slot.model_bytes for slot in self._slots.values() if slot.loaded is not None) + self._lru_bytes

    def _shrink(self, incoming: int = 0) -> None:
        """Unload least recently used idle models until the loaded ones and `incoming` more bytes fit the budget.

        Never the most recently used model, nor one a request holds.
        """
        if self._max_model_bytes is None:
            return
        victims: list[_Slot] = []
        with self._lock:
            for slot in list(self._slots.values())[:-1]:
                if self._memory_bytes() + incoming <= self._max_model_bytes:
                    break
                if slot.loaded is None or slot.users:
                    continue
                self._detach(slot)
                self._models_evicted += 1
                victims.append(slot)
        for slot in victims:
            slot.close()
        if victims:
            gc.collect()


def module_bytes(module: torch.nn.Module) -> int:
    """Memory of a module's parameters and buffers (tied weights counted once)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def estimate_model_bytes(folder: Path, device: torch.device | None = None) -> int:
    """What loading the model in `folder` will take, before loading it: the tensors its safetensors headers
    list, in the dtype models load in on `device` (a few small reads, no weights). Without safetensors, the
    size of its PyTorch files. 0 when nothing can be read (the measurement after loading then decides)."""
    element = torch.finfo(inference_dtype(device or torch.device("cpu"))).bits // 8
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
                total += math.prod(entry["shape"]) * element
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
    """One set of weights in memory (eval mode, on the serving device), its adapters' bank and its scheduler.

    `load`, `load_adapter` and `delete_adapter` run on the scheduler's thread; `users`, `adapter_users`,
    `doomed` and `detached` are guarded by the registry's lock.
    """

    def __init__(self, key: Path, target: ModelTarget, registry: ModelRegistry):
        self.key = key
        self.full_model = target.full_model_path is not None
        self.detached = False  # unloaded: no longer in the registry
        self.users = 0  # requests holding this model
        self.adapter_users: dict[Path, int] = {}  # adapter folder → requests using it
        self.loaded: ActiveModel | None = None
        self.bank: LoraBank | None = None
        self.adapters: dict[Path, tuple[int, int]] = {}  # folder → (bank id, bytes of its weights)
        self.doomed: set[Path] = set()
        self.weights_path = target.weights_path
        self.model_bytes = 0  # parameters and buffers of the loaded model (its adapters are counted apart)
        self.device = registry.device
        self._tokenizer_path = tokenizer_folder(target)
        self.scheduler = BatchScheduler(
            key.name,
            kv_limit_bytes=registry._kv_cache_bytes,
            max_rows=registry._max_batch_rows,
            on_step=registry._on_step,
        )

    def load(self) -> ActiveModel:
        if self.loaded is None:
            _refuse_custom_code(self.weights_path)
            with _LOAD_LOCK:
                # Never run code shipped with a model (`auto_map` in its config): only transformers' own classes.
                model = AutoModelForCausalLM.from_pretrained(
                    self.weights_path, dtype=inference_dtype(self.device), trust_remote_code=False
                )
                tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path, trust_remote_code=False)
            if self.device.type != "cpu":
                model = torch.nn.Module.to(model, self.device)
            model.eval().requires_grad_(False)
            self.model_bytes = module_bytes(model)
            self.bank = LoraBank(model)
            self.scheduler.attach(model, self.bank)
            self.loaded = ActiveModel(
                model=model,
                tokenizer=tokenizer,
                context_length=context_length_of(model.config),
                stop_token_ids=stop_token_ids(model.generation_config, tokenizer),
                vocab=TokenVocabulary(tokenizer),
                tokenizer_lock=threading.Lock(),
            )
        return self.loaded

    def load_adapter(self, key: Path) -> None:
        self.load()
        assert self.bank is not None
        with _LOAD_LOCK:
            adapter_id = self.bank.load(key)
        self.adapters[key] = (adapter_id, self.bank.nbytes(adapter_id))

    def delete_adapter(self, key: Path) -> None:
        entry = self.adapters.pop(key, None)
        if entry is not None and self.bank is not None:
            self.bank.unload(entry[0])

    def close(self) -> None:
        """Stop the scheduler and forget the model: its memory goes with the last reference."""
        self.scheduler.stop()
        self.loaded = None
        self.bank = None
        self.adapters.clear()


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


def tokenizer_folder(target: ModelTarget) -> Path:
    """A full fine-tune may ship its own tokenizer (e.g. a changed chat template); adapters use the base's."""
    if target.full_model_path is not None and (target.full_model_path / "tokenizer_config.json").is_file():
        return target.full_model_path
    return target.base_path


def stop_token_ids(generation_config: GenerationConfig, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """End-of-sequence ids from the generation config (chat models often list several) and the tokenizer."""
    configured = generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return frozenset(i for i in ids if i is not None)
