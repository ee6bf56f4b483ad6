"""LoraBank: rows of one batch with different adapters give what PEFT gives each row alone."""

from __future__ import annotations

import gc
import json
import os
import pickle
import shutil
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, DynamicCache

from openft.errors import InvalidRequest, ModelNotFound
from openft.inference import multi_lora
from openft.inference.multi_lora import LoraBank

ATOL = 1e-5


def _base(base_dir: Path, dtype: torch.dtype = torch.float32) -> Any:
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def reference(base_dir: Path) -> Callable[[Path | None], Any]:
    """`reference(folder)`: PEFT's model with that one adapter (None: the plain base), built once."""
    cache: dict[Path | None, Any] = {}

    def get(folder: Path | None) -> Any:
        if folder not in cache:
            model = _base(base_dir)
            cache[folder] = model if folder is None else PeftModel.from_pretrained(model, folder).eval()
        return cache[folder]

    return get


def _peft_adapter(base_dir: Path, dest: Path, config: LoraConfig, seed: int) -> Path:
    """A PEFT adapter saved by PEFT itself, with random B matrices (they start at zero)."""
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(str(dest))
    return dest


def _prompts(model: Any, lengths: list[int], seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


def _left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of a left-padded batch (positions count real tokens only,
    as `generate` does, so each row sees the positions it would see alone)."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _logits_alone(model: Any, prompt: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([prompt])).logits[0]


def _greedy(
    model: Any,
    prompts: list[list[int]],
    pad_id: int,
    steps: int = 10,
    block: Callable[[], AbstractContextManager[None]] = nullcontext,
) -> list[list[int]]:
    """Greedy decoding with a KV cache: one prefill of the left-padded batch, then one token per step, each
    forward inside a fresh `block()` (as the scheduler enters `rows()` once per step)."""
    ids, mask, positions = _left_padded(prompts, pad_id)
    cache = DynamicCache()
    written: list[list[int]] = [[] for _ in prompts]
    with torch.inference_mode():
        for _ in range(steps):
            with block():
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1)
            for row, value in enumerate(token.tolist()):
                written[row].append(value)
            ids = token[:, None]
            mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
    return written


# Exactness against PEFT -------------------------------------------------------------------------------


@pytest.fixture(params=["concatenated", "gathered"])
def stacking(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways mixed rows are computed: every adapter's A at once with a column mask (few columns), or each
    row's matrices gathered (many columns)."""
    if request.param == "gathered":
        monkeypatch.setattr(multi_lora, "CONCAT_MAX_COLUMNS", 0)
    return str(request.param)


@pytest.mark.usefixtures("stacking")
def test_mixed_rows_equal_each_adapter_alone(
    base_dir: Path, adapter_a: Path, adapter_b: Path, reference: Callable[[Path | None], Any]
) -> None:
    model = _base(base_dir)
    bank = LoraBank(model)
    a, b = bank.load(adapter_a), bank.load(adapter_b)
    prompts = _prompts(model, [9, 9, 9])
    with torch.inference_mode(), bank.rows([a, b, None]):
        logits = model(input_ids=torch.tensor(prompts)).logits
    alone = [_logits_alone(reference(f), p) for f, p in zip([adapter_a, adapter_b, None], prompts, strict=True)]
    for row in range(3):
        torch.testing.assert_close(logits[row], alone[row], atol=ATOL, rtol=0)
    # The adapters really change the output, so the equalities above say something.
    assert (
        _logits_alone(reference(adapter_a), prompts[0]) - _logits_alone(reference(None), prompts[0])
    ).abs().max() > 0.1


@pytest.mark.usefixtures("stacking")
def test_left_padded_mixed_rows_equal_each_adapter_alone(
    base_dir: Path, adapter_a: Path, adapter_b: Path, reference: Callable[[Path | None], Any]
) -> None:
    model = _base(base_dir)
    bank = LoraBank(model)
    a, b = bank.load(adapter_a), bank.load(adapter_b)
    prompts = _prompts(model, [5, 11, 8], seed=1)
    ids, mask, positions = _left_padded(prompts, model.config.pad_token_id)
    with torch.inference_mode(), bank.rows([b, None, a]):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    for row, folder in enumerate([adapter_b, None, adapter_a]):
        n = len(prompts[row])
        torch.testing.assert_close(logits[row, -n:], _logits_alone(reference(folder), prompts[row]), atol=ATOL, rtol=0)


@pytest.mark.usefixtures("stacking")
def test_greedy_generation_in_a_mixed_batch_equals_each_row_alone(
    base_dir: Path, adapter_a: Path, adapter_b: Path, reference: Callable[[Path | None], Any]
) -> None:
    model = _base(base_dir)
    bank = LoraBank(model)
    a, b = bank.load(adapter_a), bank.load(adapter_b)
    pad = model.config.pad_token_id
    prompts = _prompts(model, [6, 10, 4, 7], seed=2)
    rows = [a, None, b, a]
    together = _greedy(model, prompts, pad, block=lambda: bank.rows(rows))
    folders = [adapter_a, None, adapter_b, adapter_a]
    alone = [_greedy(reference(f), [p], pad)[0] for f, p in zip(folders, prompts, strict=True)]
    assert together == alone
    assert _greedy(reference(None), [prompts[0]], pad)[0] != alone[0]  # adapter A writes something else


def test_one_adapter_for_every_row_and_decode_steps(
    base_dir: Path, adapter_b: Path, reference: Callable[[Path | None], Any]
) -> None:
    """The fast path (all rows share one adapter: no gather) on a prefill and on T=1 decode steps."""
    model = _base(base_dir)
    bank = LoraBank(model)
    b = bank.load(adapter_b)
    pad = model.config.pad_token_id
    prompts = _prompts(model, [5, 8], seed=3)
    with bank.rows([b, b]):
        together = _greedy(model, prompts, pad)
    assert together == [_greedy(reference(adapter_b), [p], pad)[0] for p in prompts]


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "o_proj"]), id="rslora"),
        pytest.param(
            dict(
                r=4,
                lora_alpha=8,
                target_modules=["q_proj", "v_proj", "up_proj"],
                rank_pattern={"v_proj": 2, "layers.1.self_attn.q_proj": 6},
                alpha_pattern={"up_proj": 3, r"layers\.0\.self_attn\.q_proj": 20},
            ),
            id="rank_and_alpha_pattern",
        ),
        pytest.param(
            dict(r=2, lora_alpha=16, target_modules=r".*\.layers\.1\.(mlp\.gate_proj|self_attn\.k_proj)"),
            id="regex_targets",
        ),
    ],
)
@pytest.mark.usefixtures("stacking")
def test_scales_like_peft(
    base_dir: Path,
    adapter_a: Path,
    tmp_path: Path,
    reference: Callable[[Path | None], Any],
    variant: dict[str, Any],
) -> None:
    folder = _peft_adapter(base_dir, tmp_path / "adapter", LoraConfig(**variant), seed=30)
    model = _base(base_dir)
    bank = LoraBank(model)
    a, special = bank.load(adapter_a), bank.load(folder)
    prompts = _prompts(model, [7, 7, 7], seed=4)
    with torch.inference_mode(), bank.rows([special, a, special]):
        logits = model(input_ids=torch.tensor(prompts)).logits
    peft = PeftModel.from_pretrained(_base(base_dir), folder).eval()
    for row, ref in enumerate([peft, reference(adapter_a), peft]):
        torch.testing.assert_close(logits[row], _logits_alone(ref, prompts[row]), atol=ATOL, rtol=0)
    assert (_logits_alone(peft, prompts[0]) - _logits_alone(reference(None), prompts[0])).abs().max() > 0.01


def test_adapter_name_in_keys_is_read(
    base_dir: Path, adapter_a: Path, tmp_path: Path, reference: Callable[[Path | None], Any]
) -> None:
    """Files that keep PEFT's adapter name in their keys (`lora_A.default.weight`) mean the same."""
    folder = Path(shutil.copytree(adapter_a, tmp_path / "named"))
    tensors = load_file(folder / "adapter_model.safetensors")
    renamed = {
        k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v for k, v in tensors.items()
    }
    save_file(renamed, folder / "adapter_model.safetensors")
    model = _base(base_dir)
    bank = LoraBank(model)
    named = bank.load(folder)
    prompt = _prompts(model, [6], seed=5)[0]
    with torch.inference_mode(), bank.rows([named]):
        logits = model(input_ids=torch.tensor([prompt])).logits[0]
    torch.testing.assert_close(logits, _logits_alone(reference(adapter_a), prompt), atol=ATOL, rtol=0)


# The bare base ----------------------------------------------------------------------------------------


def test_rows_without_adapters_are_bit_identical_to_the_base(base_dir: Path, adapter_a: Path, adapter_b: Path) -> None:
    model = _base(base_dir)
    prompts = torch.tensor(_prompts(model, [8, 8, 8], seed=6))
    with torch.inference_mode():
        before = model(input_ids=prompts).logits
    names = list(model.state_dict())
    bank = LoraBank(model)
    bank.load(adapter_a)
    bank.load(adapter_b)
    with torch.inference_mode():
        outside = model(input_ids=prompts).logits
        with bank.rows([None, None, None]):
            all_none = model(input_ids=prompts).logits
        with bank.rows([]):
            empty = model(input_ids=prompts).logits
    assert torch.equal(outside, before) and torch.equal(all_none, before) and torch.equal(empty, before)
    # The hooks leave the model as transformers built it: same parameter names, classes, tied head.
    assert list(model.state_dict()) == names
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight


# Lifetime and misuse ----------------------------------------------------------------------------------


def _weak_refs(bank: LoraBank, adapter_id: int) -> list[weakref.ref[torch.Tensor]]:
    return [weakref.ref(t) for w in bank.adapter_weights(adapter_id).values() for t in (w.a, w.b)]


def test_unload_frees_the_weights_and_ids_are_never_reused(
    base_dir: Path, adapter_a: Path, adapter_b: Path, reference: Callable[[Path | None], Any]
) -> None:
    model = _base(base_dir)
    bank = LoraBank(model)
    a, b = bank.load(adapter_a), bank.load(adapter_b)
    on_disk = load_file(adapter_a / "adapter_model.safetensors")
    assert bank.nbytes(a) == sum(t.numel() * 4 for t in on_disk.values())  # fp32 base: 4 bytes each
    prompt = _prompts(model, [6], seed=7)[0]

    refs = _weak_refs(bank, a)
    bank.unload(a)
    gc.collect()
    assert refs and all(ref() is None for ref in refs)
    for call in (lambda: bank.nbytes(a), lambda: bank.unload(a), lambda: bank.rows([a]).__enter__()):
        with pytest.raises(KeyError):
            call()

    again = bank.load(adapter_a)
    assert again not in (a, b)
    with torch.inference_mode(), bank.rows([again, b]):
        logits = model(input_ids=torch.tensor([prompt, prompt])).logits
    torch.testing.assert_close(logits[0], _logits_alone(reference(adapter_a), prompt), atol=ATOL, rtol=0)
    torch.testing.assert_close(logits[1], _logits_alone(reference(adapter_b), prompt), atol=ATOL, rtol=0)


def test_misuse_fails_loudly(base_dir: Path, adapter_a: Path) -> None:
    model = _base(base_dir)
    bank = LoraBank(model)
    a = bank.load(adapter_a)
    ids = torch.tensor(_prompts(model, [4, 4], seed=8))
    with bank.rows([a, None]):
        with pytest.raises(ValueError, match="batch 3 inside a rows\\(\\) block for 2"):
            model(input_ids=torch.cat([ids, ids[:1]]))  # a third row would get no owner
        with pytest.raises(RuntimeError, match="in use"):
            bank.unload(a)
        with pytest.raises(RuntimeError, match="nest"), bank.rows([None, a]):
            pass


def test_bf16_base_gets_bf16_weights(base_dir: Path, adapter_a: Path, adapter_b: Path) -> None:
    model = _base(base_dir, torch.bfloat16)
    bank = LoraBank(model)
    a, b = bank.load(adapter_a), bank.load(adapter_b)
    weights = bank.adapter_weights(a)
    assert weights and all(w.a.dtype == w.b.dtype == torch.bfloat16 for w in weights.values())
    assert bank.nbytes(a) == sum(t.numel() * 2 for t in load_file(adapter_a / "adapter_model.safetensors").values())
    prompts = _prompts(model, [6, 6, 6], seed=9)
    with torch.inference_mode():
        with bank.rows([a, b, None]):
            mixed = model(input_ids=torch.tensor(prompts)).logits
        with bank.rows([a]):
            alone = model(input_ids=torch.tensor(prompts[:1])).logits
        base = model(input_ids=torch.tensor(prompts[2:])).logits
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed[0], alone[0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(mixed[2], base[0], atol=0.05, rtol=0.02)
    assert (mixed[0].float() - base[0].float()).abs().max() > 0.1


# Refusals ---------------------------------------------------------------------------------------------


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _edit_tensors(folder: Path, edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    path = folder / "adapter_model.safetensors"
    save_file(edit(load_file(path)), path)


class _Trap:
    """Unpickling this creates `marker`: a stand-in for code a tenant's pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def _pickle_only(folder: Path) -> None:
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Trap(folder / "unpickled")))


def _first_key(tensors: dict[str, torch.Tensor], part: str) -> str:
    return next(k for k in sorted(tensors) if part in k)


REFUSALS: dict[str, tuple[Callable[[Path], object], str]] = {
    "dora": (lambda f: _edit_config(f, use_dora=True), "DoRA"),
    "modules_to_save": (lambda f: _edit_config(f, modules_to_save=["lm_head"]), "modules_to_save"),
    "bias": (lambda f: _edit_config(f, bias="lora_only"), "bias"),
    "not_lora": (lambda f: _edit_config(f, peft_type="IA3"), "Only LoRA"),
    "pissa": (lambda f: _edit_config(f, init_lora_weights="pissa"), "changes the base weights"),
    "pickle_only": (_pickle_only, "pickle"),
    "shape_mismatch": (
        lambda f: _edit_tensors(f, lambda t: {**t, _first_key(t, "lora_A"): t[_first_key(t, "lora_A")][:3]}),
        "shapes",
    ),
    "rank_mismatch": (lambda f: _edit_config(f, r=8), "r=8"),
    "unknown_module": (
        lambda f: _edit_tensors(f, lambda t: {k.replace("layers.1.", "layers.7."): v for k, v in t.items()}),
        "does not have: model.layers.7",
    ),
    "untargeted_module": (lambda f: _edit_config(f, target_modules=["q_proj", "v_proj"]), "target_modules"),
    "lonely_matrix": (
        lambda f: _edit_tensors(f, lambda t: {k: v for k, v in t.items() if k != _first_key(t, "lora_B")}),
        "only one",
    ),
    "not_safetensors": (lambda f: (f / "adapter_model.safetensors").write_bytes(b"\x10" * 40), "cannot be read"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unusable_adapters_are_refused_and_change_nothing(
    base_dir: Path, adapter_a: Path, tmp_path: Path, case: str
) -> None:
    folder = Path(shutil.copytree(adapter_a, tmp_path / "adapter"))
    damage, message = REFUSALS[case]
    damage(folder)
    model = _base(base_dir)
    bank = LoraBank(model)
    with pytest.raises(InvalidRequest, match=message) as caught:
        bank.load(folder)
    assert caught.value.param == "model"
    assert not (folder / "unpickled").exists()
    assert not any(module._forward_hooks for module in model.modules())  # checked before anything is wrapped


def test_lora_on_embeddings_is_refused(base_dir: Path, tmp_path: Path) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])
    folder = _peft_adapter(base_dir, tmp_path / "embeddings", config, seed=40)
    with pytest.raises(InvalidRequest, match="embeddings") as caught:
        LoraBank(_base(base_dir)).load(folder)
    assert caught.value.param == "model"


@pytest.mark.parametrize("missing", ["adapter_config.json", "adapter_model.safetensors"])
def test_missing_files_are_model_not_found(base_dir: Path, adapter_a: Path, tmp_path: Path, missing: str) -> None:
    folder = Path(shutil.copytree(adapter_a, tmp_path / "adapter"))
    (folder / missing).unlink()
    with pytest.raises(ModelNotFound) as caught:
        LoraBank(_base(base_dir)).load(folder)
    assert caught.value.param == "model"
