"""Load the base model and tokenizer, attach LoRA (or train every weight), and save servable weights.

Trained weights stay in fp32 (bf16 autocast, where `precision.py` picks it, changes only the arithmetic of
the forward): with fp32 trained weights, gradients and optimizer state a resumed run on a CPU is
bit-identical to a straight one. LoRA's frozen base is kept in bf16 when the job runs in bf16
(`frozen_dtype`): it never changes, so it needs no fp32 master copy, and it is half the memory. QLoRA
(`spec.quantization`) loads the base's linear layers 4-bit NF4 instead (`quantization.py`); the adapter it saves
names the unquantized base and carries no quantization settings, so serving and `export --merged` use that base.
A LoRA run saves a PEFT adapter folder (what `PeftModel.from_pretrained` loads); a full fine-tune saves a
whole HF model folder. Both carry the tokenizer, so the chat template used in training travels with the
weights to inference.

DPO also needs the *reference* policy, the model as it was before this job trained it (`Reference`):
- LoRA from a base model: the same model with its adapter switched off (`disable_adapter`), no copy.
- LoRA continuing a fine-tuned adapter: a frozen second copy of that adapter (a few MB), switched in
  for the reference pass, so the reference is the fine-tuned model the job started from, not the base.
- Full fine-tuning: a frozen copy of the whole starting model. It costs one more set of fp32 weights
  (4 bytes per parameter, about a quarter more than training's weights + gradients + AdamW state).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from openft.basemodels import BaseModelUnavailable, materialize_spec
from openft.trainer_contract import BaseModelSpec, LoraSpec, TrainJobSpec
from openft.training.quantization import QuantizationUnavailable, describe, load_quantized, logical_numel

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, for base models that ship no chat template (it is saved with the weights, so inference agrees)."""

ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINED_ADAPTER = "default"
REFERENCE_ADAPTER = "reference"
"""The frozen copy of a continued adapter that DPO measures against (never saved)."""


@dataclass
class LoadedModel:
    model: Any
    """A transformers model, or (LoRA) a PEFT model around one. Any: the two libraries' annotations do not
    describe how they are used together (PEFT wraps, both take paths, `to` is wrapped by a decorator)."""
    tokenizer: Any
    is_lora: bool
    base_path: Path
    continued_adapter: Path | None
    """The fine-tuned adapter this job continues (LoRA), or None."""
    context_length: int | None
    notes: list[str]
    """Things worth a `log` message (fallback template, pad token, ignored LoRA settings)."""

    @property
    def n_params(self) -> int:
        return sum(logical_numel(p) for p in self.model.parameters())  # a 4-bit weight packs two per byte

    @property
    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _is_adapter_folder(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and not (path / "config.json").is_file()


def resolve_base(spec: TrainJobSpec) -> tuple[Path, Path | None]:
    """(base model folder, adapter folder to continue from or None).

    Continuing from a fine-tuned LoRA model (`source: finetune` pointing at an adapter) loads the base
    the adapter was trained on, named in its adapter_config.json.
    """
    return resolve_weights(spec.base_model, Path(spec.cache_dir), max_bytes=spec.max_model_bytes)


def resolve_weights(model: BaseModelSpec, cache_dir: Path, *, max_bytes: int | None) -> tuple[Path, Path | None]:
    """(model folder, adapter folder on it or None) of any model a job names: its base, or an RFT judge."""
    path = materialize_spec(model, cache_dir, max_hub_bytes=max_bytes)
    if not _is_adapter_folder(path):
        return path, None
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(str(config.get("base_model_name_or_path") or ""))
    if not base.is_dir():
        raise BaseModelUnavailable(f"the base model of the fine-tuned model {model.name!r} is missing")
    return base, path


def load_tokenizer(path: Path) -> tuple[Any, list[str]]:
    from transformers import AutoTokenizer

    notes = []
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)  # never run a model's own code
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
        notes.append("the tokenizer has no padding token; using its end-of-sequence token")
    if not tokenizer.chat_template:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        notes.append("the base model has no chat template; using ChatML")
    return tokenizer, notes


def _lora_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )


def frozen_dtype(spec: TrainJobSpec, precision: Literal["fp32", "bf16"]) -> Literal["fp32", "bf16"]:
    """The dtype of the weights training does not change: with LoRA under bf16 the frozen base is stored in bf16
    (half the memory; it never changes, so resume stays exact), adapters and their optimizer state stay fp32.
    Full fine-tuning keeps every weight fp32 (they are the master weights)."""
    return "bf16" if spec.lora is not None and precision == "bf16" else "fp32"


def load_model(
    spec: TrainJobSpec,
    *,
    resume_weights: Path | None = None,
    frozen: Literal["fp32", "bf16"] = "fp32",
    attn_implementation: str | None = None,
) -> LoadedModel:
    """The model to train, on the training device, in train mode, with `attn_implementation`'s attention
    kernel (`attention.pick_attention`; None: transformers' default, SDPA where the model has it).

    `resume_weights` is a checkpoint's adapter/ or model/ folder: the model is built exactly as at the
    start (same code path, so parameters come in the same order for the optimizer state) and the
    checkpoint's weights are loaded into it. Call after seeding: LoRA's initialisation draws random numbers.
    """
    from transformers import AutoModelForCausalLM

    base_path, adapter = resolve_base(spec)
    tokenizer, notes = load_tokenizer(resume_weights if resume_weights and spec.lora is None else base_path)
    # Full fine-tuning resumes from the checkpoint's own model folder; LoRA always starts from the base.
    weights_path = resume_weights if resume_weights is not None and spec.lora is None else base_path
    model: Any
    if spec.quantization is not None:  # QLoRA: the base's linear layers 4-bit NF4, the rest in `frozen`
        if spec.lora is None:
            raise QuantizationUnavailable("a 4-bit base trains only LoRA adapters (fine_tuning_mode qlora)")
        model = load_quantized(weights_path, pick_device(), frozen, attn_implementation)
        notes.append(describe(frozen))
    else:
        dtype = torch.bfloat16 if frozen == "bf16" else torch.float32  # loaded straight in it: no fp32 copy at peak
        model = AutoModelForCausalLM.from_pretrained(
            weights_path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=False
        )
    context_length = getattr(model.config, "max_position_embeddings", None)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id

    if spec.lora is not None:
        from peft import PeftModel, get_peft_model

        if adapter is not None:  # keep training the fine-tuned adapter; its own r/alpha/targets apply
            model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
            notes.append("continuing the fine-tuned adapter; its own LoRA settings apply")
            if spec.method == "dpo":  # the policy DPO measures against: the adapter as it starts
                model.load_adapter(adapter, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        else:
            with warnings.catch_warnings():  # peft asks a deprecated transformers property; not ours to fix
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                model = get_peft_model(model, _lora_config(spec.lora))
        for parameter in model.parameters():  # the trained weights stay fp32 whatever the frozen ones are
            if parameter.requires_grad and parameter.dtype != torch.float32:
                parameter.data = parameter.data.float()
        if resume_weights is not None:
            load_adapter_weights(model, resume_weights)
    elif adapter is not None and resume_weights is None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        notes.append("merged the fine-tuned adapter into the base for full fine-tuning")
    if spec.lora is None:
        for parameter in model.parameters():
            parameter.requires_grad_(True)

    model.to(pick_device())
    model.train()
    continued = adapter if spec.lora is not None else None
    return LoadedModel(model, tokenizer, spec.lora is not None, base_path, continued, context_length, notes)


def end_tokens(model: Any, tokenizer: Any) -> list[int]:
    """The tokens that end an answer: the generation config's end tokens and the tokenizer's."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (getattr(config, "eos_token_id", None), tokenizer.eos_token_id):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in ids:
                ids.append(int(token))
    return ids


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put a saved adapter's tensors into a freshly built PEFT model; every LoRA tensor must be there."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result: Any = set_peft_model_state_dict(model, load_file(folder / ADAPTER_WEIGHTS))  # annotated `namedtuple`
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the checkpoint's adapter does not fit the model (missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]})"
        )


def save_weights(loaded: LoadedModel, dest: Path) -> None:
    """Servable weights into `dest`: a PEFT adapter folder (LoRA) or a full HF model folder, + tokenizer."""
    if loaded.is_lora:
        loaded.model.save_pretrained(dest, selected_adapters=[TRAINED_ADAPTER])  # not DPO's reference copy
    else:
        loaded.model.save_pretrained(dest)
    loaded.tokenizer.save_pretrained(dest)


# The DPO reference --------------------------------------------------------------------------------


class Reference:
    """The frozen starting policy: `with reference.model() as m:` gives a module to run it (eval mode).

    Callers run it under no_grad. Eval mode means no dropout, so the reference draws no random numbers.
    """

    def __init__(self, model: Any, *, frozen_copy: Any = None, adapter: str | None = None):
        self._model, self._copy, self._adapter = model, frozen_copy, adapter

    @contextmanager
    def model(self) -> Iterator[Any]:
        if self._copy is not None:
            yield self._copy
            return
        was_training = self._model.training
        self._model.eval()
        try:
            if self._adapter is None:
                with self._model.disable_adapter():
                    yield self._model
            else:
                self._model.set_adapter(self._adapter)
                try:
                    yield self._model
                finally:  # also makes the trained adapter the trainable one again (requires_grad)
                    self._model.set_adapter(TRAINED_ADAPTER)
        finally:
            self._model.train(was_training)


def build_reference(loaded: LoadedModel, spec: TrainJobSpec) -> Reference:
    """The reference for this job (see the module docstring). Draws from no random generator it leaves changed."""
    if loaded.is_lora:
        return Reference(loaded.model, adapter=REFERENCE_ADAPTER if loaded.continued_adapter else None)
    kernel = getattr(loaded.model.config, "_attn_implementation", None)  # the policy's, so both round alike
    with torch.random.fork_rng(devices=[]):  # loading must not move the training RNG (exact resume)
        frozen = load_model(spec, attn_implementation=kernel).model
    frozen.eval()
    frozen.requires_grad_(False)
    return Reference(loaded.model, frozen_copy=frozen)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them.

    Non-reentrant checkpointing (torch's recommended kind): the recomputed forward replays the random state of
    the first one, so dropout draws the same masks and the results are those of a run without it; nothing needs
    the inputs to require grad, so frozen embeddings (LoRA) need no workaround."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
