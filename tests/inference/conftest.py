"""Tiny models for the inference tests: a base, two LoRA adapters on it, a merged full fine-tune, and
wrappers that make a model write a given text (or write slowly)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from openft.inference import InferenceEngine, ModelTarget
from openft.inference import registry as registry_module
from tests.support.tiny_model import build_tiny_model


@pytest.fixture(scope="package")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with larger random weights.

    At its default init (std 0.02) the tiny model's logits are nearly flat and greedy decoding repeats
    one token; std 0.15 gives varied text, so stop strings and base-vs-adapter differences are visible.
    """
    path = build_tiny_model(tmp_path_factory.mktemp("base"))
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(path)
    return path


def _make_adapter(base_dir: Path, dest: Path, seed: int) -> Path:
    """A LoRA adapter whose B matrices are random (they start at zero), so it really changes the output."""
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="package")
def adapter_a(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(base_dir, tmp_path_factory.mktemp("adapter_a"), seed=10)


@pytest.fixture(scope="package")
def adapter_b(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_adapter(base_dir, tmp_path_factory.mktemp("adapter_b"), seed=20)


@pytest.fixture(scope="package")
def merged_a(base_dir: Path, adapter_a: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapter A merged into the base weights: a full fine-tune. Saved without a tokenizer on purpose."""
    dest = tmp_path_factory.mktemp("merged_a")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_a)
    model.merge_and_unload().save_pretrained(dest)
    return dest


@pytest.fixture(scope="package")
def base(base_dir: Path) -> ModelTarget:
    return ModelTarget(base_path=base_dir)


@pytest.fixture(scope="package")
def lora_a(base_dir: Path, adapter_a: Path) -> ModelTarget:
    return ModelTarget(base_path=base_dir, adapter_path=adapter_a)


@pytest.fixture(scope="package")
def lora_b(base_dir: Path, adapter_b: Path) -> ModelTarget:
    return ModelTarget(base_path=base_dir, adapter_path=adapter_b)


@pytest.fixture(scope="package")
def full_a(base_dir: Path, merged_a: Path) -> ModelTarget:
    return ModelTarget(base_path=base_dir, full_model_path=merged_a)


# Models that write a given text, and slow models ----------------------------------------------------


class ScriptedLM(torch.nn.Module):
    """Wraps a real model (so its KV cache fills normally) but makes it write `script`, then stop.

    The logits are the real ones plus a large bonus on the script's next token, so a constraint that
    refuses a scripted token falls back on the real model's preferences. Steps are counted per cache,
    i.e. per request.
    """

    def __init__(self, real: torch.nn.Module, script: list[int], eos_id: int, delay: float = 0.0):
        super().__init__()
        self.real = real
        self.config = real.config
        self.generation_config = real.generation_config
        self.script = [*script, eos_id]
        self.delay = delay

    def forward(self, input_ids: torch.Tensor, cache: Any = None, **kwargs: Any) -> Any:
        step = getattr(cache, "_scripted_step", -1) + 1
        cache._scripted_step = step
        if self.delay:
            time.sleep(self.delay)
        out = self.real(input_ids=input_ids, cache=cache, **kwargs)
        if step < len(self.script):
            out.logits[:, -1, self.script[step]] += 50.0
        return out


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, base_dir: Path) -> Callable[..., InferenceEngine]:
    """`scripted(text, delay=0, engine=None)`: an engine whose base model (any folder) writes `text`."""
    original = registry_module.AutoModelForCausalLM.from_pretrained
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    state: dict[str, Any] = {}

    def from_pretrained(path: Any, **kwargs: Any) -> Any:
        script = tokenizer(state["text"], add_special_tokens=False)["input_ids"]
        return ScriptedLM(original(path, **kwargs), script, tokenizer.eos_token_id, state["delay"])

    monkeypatch.setattr(registry_module.AutoModelForCausalLM, "from_pretrained", from_pretrained)

    def make(text: str, delay: float = 0.0) -> InferenceEngine:
        state.update(text=text, delay=delay)
        return InferenceEngine()

    return make


HERMES_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function.name') | join(', ') }}. "
    "Call them as <tool_call>{json}</tool_call>.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] or '' }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="package")
def hermes_dir(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model with a chat template that lists tools and asks for `<tool_call>` blocks."""
    folder = Path(shutil.copytree(base_dir, tmp_path_factory.mktemp("hermes") / "model"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = HERMES_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder
