"""Tiny models for the inference tests: a base, two LoRA adapters on it, and a merged full fine-tune."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from openft.inference import ModelTarget
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
