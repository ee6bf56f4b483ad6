"""Per-row LoRA: one forward pass over rows that use different adapters of the same base, or none.

A continuous-batching scheduler runs one forward over many requests' rows. PEFT activates one adapter
per forward, so rows with different adapters would need one pass each. Here, as in Punica, S-LoRA and
LoRAX, every targeted `nn.Linear` computes the base output for the whole batch once and then, for each
distinct adapter among the rows, adds that adapter's low-rank term to its own rows only:

    y = base(x);  y[rows_k] += scale_k * (x[rows_k] @ A_k.T) @ B_k.T

Design points, and why:

- **Forward hooks, not replacement modules.** Each targeted Linear gets a forward hook; the module, its
  class and its parameters stay exactly where transformers put them, so state-dict names, tied weights,
  `module_bytes` and `isinstance` checks are untouched. Hooks are added the first time an adapter needs
  a module and stay (a hook with nothing to do returns at once).
- **The grouping is built once per `rows()` block** (one index tensor per adapter and device), not per
  module: a decode step runs every targeted module of every layer with the same rows. It is kept for the
  next block with the same rows, as consecutive decode steps are. When all rows share
  one adapter there is no indexing at all; when no row has an adapter there is no LoRA work, so the
  output is bit-identical to the bare base.
- **Plain torch, one adapter at a time.** Per module and distinct adapter: one `index_select`, two thin
  GEMMs and one `index_add_`. That is exact (the same operations PEFT runs per row) and portable; a fused
  gathered kernel (Punica's BGMV/SGMV) can replace `_Plan.apply` later without changing the API.
- **Only safetensors, checked before anything changes.** Tenants upload adapters, so a `.bin` (a pickle)
  is refused, never unpickled, and every tensor is checked against the base (module exists, is a Linear,
  shapes match the config's rank) before any hook is added or weight kept. An adapter this code cannot
  apply exactly as PEFT would (DoRA, `modules_to_save`, biases, embeddings, base-mutating inits, ...) is
  refused with an `InvalidRequest` on `model` rather than served subtly wrong.

Thread safety: none, on purpose. The scheduler drives each base from its own single thread (as the
registry does, see `registry.py`), so every call to a bank comes from one thread and no lock is needed.
Do not put PEFT's own LoRA layers on the same model: the bank expects the plain transformers modules.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.hooks import RemovableHandle

from openft.errors import InvalidRequest, ModelNotFound

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
"""A LoRA matrix in a PEFT file: `base_model.model.<module>.lora_A.weight`, as `save_pretrained` writes it;
older or hand-made files may keep the adapter's name (`lora_A.default.weight`), which means the same."""

_UNSUPPORTED_OPTIONS = {
    "use_dora": "DoRA (use_dora) rescales the base weights per adapter",
    "modules_to_save": "modules_to_save replaces whole modules of the base",
    "lora_bias": "lora_bias adds a bias to the LoRA B matrices",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D layers) is not supported",
    "target_parameters": "LoRA on parameters (target_parameters) is not supported",
    "trainable_token_indices": "trainable_token_indices changes the embeddings",
    "layer_replication": "layer_replication changes the base's layers",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens) is not supported",
    "use_qalora": "QA-LoRA (use_qalora) is not supported",
    "use_bdlora": "block-diagonal LoRA (use_bdlora) is not supported",
    "arrow_config": "Arrow routing (arrow_config) is not supported",
    "megatron_config": "Megatron layers (megatron_config) are not supported",
}
"""Config options that make PEFT compute something other than `base(x) + scale * B(A(x))` on Linears;
refused when set to anything truthy (PEFT writes them as false, null or empty when unused)."""

_BASE_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")
"""`init_lora_weights` values with which PEFT rewrites the base weights when the adapter is loaded (the adapter
is a residual of a changed base); one base shared by many adapters cannot be changed for one of them."""


@dataclass(frozen=True)
class LoraWeights:
    """One adapter's matrices for one Linear, in the module's dtype and on its device."""

    a: torch.Tensor
    """(r, in_features)"""
    b: torch.Tensor
    """(out_features, r)"""
    scale: float
    """lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA (per module with rank_pattern/alpha_pattern)."""


@dataclass(frozen=True)
class _Adapter:
    folder: Path
    modules: tuple[str, ...]
    nbytes: int


GATHER_FROM_GROUPS = 2
"""With this many adapters (or more) among a forward's rows, a module's LoRA terms are computed for all rows at
once from the adapters' stacked matrices (`_Site.stacked`), in a fixed number of ops whatever the number of
adapters, instead of a gather, two matmuls and a scatter per adapter. Below it, per-adapter groups cost fewer
ops."""
CONCAT_MAX_COLUMNS = 128
"""Up to this many stacked LoRA columns (loaded adapters × largest rank) a module computes every adapter's A for
every row in one GEMM and masks the columns that are not the row's own (two plain GEMMs, no gather; the
wasted columns cost little next to the base layer). Beyond it, each row's A and B are gathered and applied
with batched matmuls (no wasted work, but a copy of the matrices per row)."""


@dataclass(frozen=True)
class _Plan:
    """Which rows get which adapter, for every forward inside one `rows()` block."""

    batch: int
    groups: tuple[tuple[int, Mapping[torch.device, torch.Tensor] | None], ...]
    """(adapter id, its rows' indices on each device the wrapped modules use; None: every row)."""
    row_adapters: tuple[int | None, ...] = ()
    row_slots: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per site (by `id`), each row's slot in that site's stacked matrices (gathered path) or its column mask
    (concatenated path); filled on first use, reused by every step of the block (and by later blocks with the
    same rows)."""

    def apply(self, site: _Site, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add each adapter's LoRA term to its rows of `y` (the base output), in place."""
        if x.shape[0] != self.batch:
            # A mismatch would hand one request's adapter to another's rows: fail loudly instead.
            raise ValueError(f"forward has batch {x.shape[0]} inside a rows() block for {self.batch} rows")
        if len(self.groups) >= GATHER_FROM_GROUPS:
            a, b_t, slot_of = site.stacked()
            slots, rank = self.row_slots.get(id(site)), a.shape[1]
            concatenated = (a.shape[0] - 1) * rank <= CONCAT_MAX_COLUMNS
            if slots is None:
                slots = torch.tensor(
                    [0 if i is None else slot_of.get(i, 0) for i in self.row_adapters], device=x.device
                )
                if concatenated:  # each row keeps only its own adapter's columns (slot 0: none)
                    columns = torch.arange((a.shape[0] - 1) * rank, device=x.device) // rank + 1
                    slots = (columns[None, :] == slots[:, None]).to(x.dtype)[:, None, :]
                self.row_slots[id(site)] = slots
            if concatenated:
                # (batch, tokens, in) × (in, slots·r), masked per row, × (slots·r, out); B carries the scale.
                hidden = F.linear(x, a[1:].reshape(-1, a.shape[2])) * slots
                y.add_(hidden @ b_t[1:].reshape(-1, b_t.shape[2]))
            else:
                # (batch, tokens, in) × (batch, in, r) → (batch, tokens, r) × (batch, r, out).
                hidden = torch.bmm(x, a.index_select(0, slots).transpose(1, 2))
                y.add_(torch.bmm(hidden, b_t.index_select(0, slots)))
            return
        weights = site.weights
        for adapter_id, index in self.groups:
            lora = weights.get(adapter_id)
            if lora is None:
                continue  # this adapter does not target this module
            if index is None:
                y.add_(F.linear(F.linear(x, lora.a), lora.b), alpha=lora.scale)
            else:
                rows = index[x.device]
                delta = F.linear(F.linear(x.index_select(0, rows), lora.a), lora.b)
                y.index_add_(0, rows, delta, alpha=lora.scale)


class _Active:
    """The bank's current plan, shared with the hooks (which hold this, not the bank, so no cycle
    model → hook → bank → model keeps a dropped model alive until the next garbage collection)."""

    def __init__(self) -> None:
        self.open = False
        self.plan: _Plan | None = None


class _Site:
    """One hooked Linear: the adapters' weights for it, and the hook that applies them."""

    def __init__(self, module: torch.nn.Linear, active: _Active):
        self.device = module.weight.device
        self.weights: dict[int, LoraWeights] = {}
        self._stacked: tuple[torch.Tensor, torch.Tensor, dict[int, int]] | None = None
        self._active = active
        self.handle: RemovableHandle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        plan = self._active.plan
        if plan is None or not self.weights:
            return  # the base output as is: no copy, no extra op
        x = args[0] if args else kwargs["input"]
        plan.apply(self, x, output)

    def forget_stack(self) -> None:
        self._stacked = None

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor, dict[int, int]]:
        """Every adapter's matrices for this module stacked, A as (slots, r_max, in) and (B·scale)ᵀ as
        (slots, r_max, out), smaller ranks zero-padded (exact: the padding adds zeros); slot 0 is all zeros
        (rows without an adapter, or whose adapter does not target this module). Rebuilt after a load or
        unload changes `weights`; costs one more copy of the adapters' matrices for this module."""
        if self._stacked is None:
            ids = sorted(self.weights)
            rank = max(w.a.shape[0] for w in self.weights.values())
            first = next(iter(self.weights.values()))
            out_features, in_features = first.b.shape[0], first.a.shape[1]
            with torch.inference_mode(False):
                a = first.a.new_zeros((len(ids) + 1, rank, in_features))
                b_t = first.b.new_zeros((len(ids) + 1, rank, out_features))
                for slot, adapter_id in enumerate(ids, start=1):
                    lora = self.weights[adapter_id]
                    r = lora.a.shape[0]
                    a[slot, :r] = lora.a
                    b_t[slot, :r] = (lora.b * lora.scale).T
            self._stacked = (a, b_t, {adapter_id: slot for slot, adapter_id in enumerate(ids, start=1)})
        return self._stacked


class LoraBank:
    """Per-row LoRA adapters on one base model (a plain transformers model, any dtype and device).

    `load` an adapter folder to get an id, then run forwards inside `rows([...ids or None per row])`.
    Weights follow each module's dtype and device at load time, so place the model before loading. Not
    thread-safe by design: all calls for one base come from the scheduler's single thread for that base.
    The bank does not deduplicate folders: loading one twice gives two ids (the caller keeps the map).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._modules = dict(model.named_modules())
        self._sites: dict[str, _Site] = {}
        self._adapters: dict[int, _Adapter] = {}
        self._next_id = 0
        self._active = _Active()
        self._last_plan: tuple[tuple[int | None, ...], _Plan | None] | None = None
        """The previous block's rows and plan: decode steps repeat the same rows until a request joins or
        leaves, so they reuse its index tensors (no host-to-device copy per step). Dropped on load/unload."""

    def load(self, folder: Path) -> int:
        """Read a PEFT LoRA folder and return its new id (ids are never reused, so a stale id fails).

        Raises ModelNotFound when the folder lacks its files, InvalidRequest (param `model`) when the adapter
        cannot be applied exactly; nothing is changed then.
        """
        folder = Path(folder)
        config = _read_config(folder)
        tensors = _read_tensors(folder)
        prepared = self._check(config, tensors)
        adapter_id = self._next_id
        self._next_id += 1
        self._last_plan = None  # new modules may bring new devices
        nbytes = 0
        with torch.inference_mode(False):  # plain tensors: usable inside and outside inference mode
            for name, (a, b, scale) in prepared.items():
                module = self._modules[name]
                assert isinstance(module, torch.nn.Linear)
                dtype, device = module.weight.dtype, module.weight.device
                lora = LoraWeights(
                    a=a.to(device=device, dtype=dtype).contiguous(),
                    b=b.to(device=device, dtype=dtype).contiguous(),
                    scale=scale,
                )
                site = self._sites.get(name)
                if site is None:
                    site = self._sites[name] = _Site(module, self._active)
                site.weights[adapter_id] = lora
                site.forget_stack()
                nbytes += lora.a.numel() * lora.a.element_size() + lora.b.numel() * lora.b.element_size()
        self._adapters[adapter_id] = _Adapter(folder=folder, modules=tuple(prepared), nbytes=nbytes)
        return adapter_id

    def unload(self, adapter_id: int) -> None:
        """Drop the adapter's weights (the bank keeps no reference to them); its hooks stay for others."""
        adapter = self._adapters[adapter_id]
        plan = self._active.plan
        if plan is not None and any(group_id == adapter_id for group_id, _ in plan.groups):
            raise RuntimeError(f"adapter {adapter_id} is in use by the current rows() block")
        for name in adapter.modules:
            del self._sites[name].weights[adapter_id]
            self._sites[name].forget_stack()
        del self._adapters[adapter_id]
        self._last_plan = None

    def nbytes(self, adapter_id: int) -> int:
        """Bytes of the adapter's A and B matrices, as stored (the base's dtype)."""
        return self._adapters[adapter_id].nbytes

    def adapter_weights(self, adapter_id: int) -> Mapping[str, LoraWeights]:
        """The adapter's matrices per module name, read-only (for inspection and tests)."""
        return MappingProxyType(
            {name: self._sites[name].weights[adapter_id] for name in self._adapters[adapter_id].modules}
        )

    @contextmanager
    def rows(self, adapter_ids: Sequence[int | None]) -> Iterator[None]:
        """Inside this block, every forward of the model has batch dimension `len(adapter_ids)` and row i
        gets adapter `adapter_ids[i]` (None: the bare base). An empty or all-None list means the bare base
        for any batch, at no extra cost. Blocks do not nest. Unknown (or unloaded) ids raise KeyError."""
        if self._active.open:
            raise RuntimeError("rows() blocks do not nest")
        for adapter_id in adapter_ids:
            if adapter_id is not None and adapter_id not in self._adapters:
                raise KeyError(f"no adapter {adapter_id} in this bank")
        key = tuple(adapter_ids)
        if self._last_plan is None or self._last_plan[0] != key:
            self._last_plan = (key, self._plan(key))
        self._active.open, self._active.plan = True, self._last_plan[1]
        try:
            yield
        finally:
            self._active.open, self._active.plan = False, None

    # Internals ---------------------------------------------------------------------------------------

    def _plan(self, adapter_ids: Sequence[int | None]) -> _Plan | None:
        """Group rows by adapter, once for the block: None when no row has one (nothing to do)."""
        members: dict[int, list[int]] = {}
        for row, adapter_id in enumerate(adapter_ids):
            if adapter_id is not None:
                members.setdefault(adapter_id, []).append(row)
        if not members:
            return None
        devices = {site.device for site in self._sites.values()}
        groups: list[tuple[int, Mapping[torch.device, torch.Tensor] | None]] = []
        with torch.inference_mode(False):
            for adapter_id, rows in members.items():
                if len(rows) == len(adapter_ids):
                    groups.append((adapter_id, None))  # every row: no gather, no scatter
                else:
                    groups.append(
                        (
                            adapter_id,
                            {device: torch.tensor(rows, dtype=torch.long, device=device) for device in devices},
                        )
                    )
        return _Plan(batch=len(adapter_ids), groups=tuple(groups), row_adapters=tuple(adapter_ids))

    def _check(
        self, config: _Config, tensors: dict[str, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
        """Match every tensor to a Linear of the base and check it; module name → (A, B, scale)."""
        embedding = next((key for key in tensors if "lora_embedding" in key), None)
        if embedding is not None:  # said first: PEFT then also saves the embedding matrix itself
            raise _invalid(f"The adapter puts LoRA on embeddings, which is not supported: {embedding}")
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key)
            if match is None:
                raise _invalid(f"The adapter holds a tensor that is not a LoRA A/B matrix: {key}")
            pairs.setdefault(match["module"], {})[match["which"]] = tensor
        if not pairs:
            raise _invalid("The adapter holds no LoRA weights.")
        prepared: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
        for name, pair in sorted(pairs.items()):
            if set(pair) != {"A", "B"}:
                raise _invalid(f"The adapter has only one of the two LoRA matrices of {name}.")
            module = self._modules.get(name)
            if module is None:
                raise _invalid(f"The adapter names a module the base model does not have: {name}.")
            if not isinstance(module, torch.nn.Linear):
                kind = type(module).__name__
                raise _invalid(f"The adapter puts LoRA on {name} ({kind}); only linear layers are supported.")
            if not config.targets(name):
                raise _invalid(f"The adapter has weights for {name}, which its target_modules does not name.")
            a, b = pair["A"], pair["B"]
            r, scale = config.rank_and_scale(name)
            expected_a, expected_b = (r, module.in_features), (module.out_features, r)
            if tuple(a.shape) != expected_a or tuple(b.shape) != expected_b:
                raise _invalid(
                    f"The adapter's LoRA matrices for {name} have shapes {tuple(a.shape)} and {tuple(b.shape)}; "
                    f"this base with r={r} needs {expected_a} and {expected_b}."
                )
            if not (a.is_floating_point() and b.is_floating_point()):
                raise _invalid(f"The adapter's LoRA matrices for {name} are not floating point.")
            if not module.weight.is_floating_point():
                raise _invalid(f"{name} of this base is quantized; per-row LoRA needs floating-point weights.")
            prepared[name] = (a, b, scale)
        return prepared


# Reading adapter folders ----------------------------------------------------------------------------


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="model")


@dataclass(frozen=True)
class _Config:
    """The parts of a PEFT LoraConfig that decide which modules get LoRA and at which scale."""

    r: int
    alpha: float
    use_rslora: bool
    rank_pattern: Mapping[str, int]
    alpha_pattern: Mapping[str, float]
    target_modules: str | tuple[str, ...] | None

    def targets(self, name: str) -> bool:
        """PEFT's matching (`check_target_module_exists`): a list names modules by their last dotted parts,
        a string is a regex over the whole name; "all-linear" and no targets (PEFT's per-architecture
        defaults) accept any Linear, the file's tensors deciding."""
        targets = self.target_modules
        if targets is None or targets == "all-linear":
            return True
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith(f".{t}") for t in targets)

    def rank_and_scale(self, name: str) -> tuple[int, float]:
        """r and scale of one module, as PEFT's `_create_and_replace`: the first pattern key that matches
        the end of the name (`(.*\\.)?(key)$`) overrides r or lora_alpha."""
        r = next((v for k, v in self.rank_pattern.items() if _pattern_matches(k, name)), self.r)
        alpha = next((v for k, v in self.alpha_pattern.items() if _pattern_matches(k, name)), self.alpha)
        return r, alpha / (math.sqrt(r) if self.use_rslora else r)


def _pattern_matches(key: str, name: str) -> bool:
    return re.match(rf"(.*\.)?({key})$", name) is not None


def _read_config(folder: Path) -> _Config:
    """Parse and check adapter_config.json (ModelNotFound if absent, InvalidRequest if unusable)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ModelNotFound("The model's adapter is missing on this server.", param="model")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _invalid(f"The adapter's {CONFIG_NAME} cannot be read: {exc}") from exc
    if not isinstance(raw, dict):
        raise _invalid(f"The adapter's {CONFIG_NAME} is not a JSON object.")
    if raw.get("peft_type") != "LORA":
        raise _invalid(f"Only LoRA adapters are supported, not peft_type {raw.get('peft_type')!r}.")
    for option, why in _UNSUPPORTED_OPTIONS.items():
        if raw.get(option):
            raise _invalid(f"The adapter cannot be served per request: {why}.")
    if raw.get("bias", "none") != "none":
        raise _invalid(f"The adapter trains biases (bias={raw.get('bias')!r}); only bias 'none' is supported.")
    init = raw.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_MUTATING_INITS):
        raise _invalid(
            f"The adapter was initialised with {init!r}, which changes the base weights; save it converted to "
            "plain LoRA (PEFT's path_initial_model_for_weight_conversion)."
        )
    r, alpha = raw.get("r", 8), raw.get("lora_alpha", 8)
    rank_pattern, alpha_pattern = raw.get("rank_pattern") or {}, raw.get("alpha_pattern") or {}
    if not _positive_int(r) or not _number(alpha):
        raise _invalid("The adapter's r must be a positive integer and lora_alpha a number.")
    if not isinstance(rank_pattern, dict) or not all(_positive_int(v) for v in rank_pattern.values()):
        raise _invalid("The adapter's rank_pattern must map module patterns to positive integers.")
    if not isinstance(alpha_pattern, dict) or not all(_number(v) for v in alpha_pattern.values()):
        raise _invalid("The adapter's alpha_pattern must map module patterns to numbers.")
    targets = raw.get("target_modules")
    if isinstance(targets, list) and all(isinstance(t, str) for t in targets):
        targets = tuple(targets)
    elif targets is not None and not isinstance(targets, str):
        raise _invalid("The adapter's target_modules must be a list of names or a regular expression.")
    for pattern in [*rank_pattern, *alpha_pattern, *([targets] if isinstance(targets, str) else [])]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _invalid(f"The adapter's config has an invalid pattern {pattern!r}: {exc}") from exc
    return _Config(
        r=r,
        alpha=float(alpha),
        use_rslora=bool(raw.get("use_rslora", False)),
        rank_pattern=dict(rank_pattern),
        alpha_pattern={k: float(v) for k, v in alpha_pattern.items()},
        target_modules=targets,
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of adapter_model.safetensors, on the CPU. A pickled `.bin` is never opened: unpickling
    a tenant's file can run code, so its absence of safetensors is an error, not a fallback."""
    path = folder / WEIGHTS_NAME
    if not path.is_file():
        if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
            raise _invalid(
                f"The adapter's weights are a PyTorch pickle; this server loads only {WEIGHTS_NAME} "
                "(convert with safetensors.torch.save_file)."
            )
        raise ModelNotFound("The model's adapter weights are missing on this server.", param="model")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _invalid(f"The adapter's {WEIGHTS_NAME} cannot be read: {exc}") from exc
