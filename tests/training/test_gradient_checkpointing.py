"""Gradient checkpointing changes memory and time, never results; "auto" turns it on only when needed (when it is
needed: tests/training/test_memory_plan.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import ExitCode
from tests.training.conftest import assert_same_tensors, job_spec, run_in_process, train_losses, write_job


@pytest.fixture
def make_job(tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]) -> Any:
    def make(name: str, **overrides: Any) -> Path:
        spec = job_spec(tmp_path, tiny_model_dir, data_files, name=name, **overrides)
        return write_job(tmp_path / f"{name}.json", spec)

    return make


@pytest.mark.parametrize("lora", [{"r": 4, "alpha": 8, "dropout": 0.1}, None])
def test_the_same_losses_and_weights_with_and_without(make_job: Any, tmp_path: Path, lora: Any) -> None:
    """Dropout included (LoRA's): the recomputed forward replays the same random state."""
    plain = run_in_process(make_job("plain", lora=lora, gradient_checkpointing=False, validation_file=None))
    recomputed = run_in_process(make_job("ckpt", lora=lora, gradient_checkpointing=True, validation_file=None))
    assert plain.rc == recomputed.rc == ExitCode.COMPLETED
    on = [m["message"] for m in recomputed.of("log") if m["message"].startswith("Forward pass")]
    assert on and on[0].endswith("gradient checkpointing on")
    assert train_losses(tmp_path / "plain") == train_losses(tmp_path / "ckpt")
    assert_same_tensors(tmp_path / "plain" / "model", tmp_path / "ckpt" / "model")


def test_auto_stays_off_for_a_small_model(make_job: Any) -> None:
    run = run_in_process(make_job("auto", validation_file=None))
    assert run.rc == ExitCode.COMPLETED
    [line] = [m["message"] for m in run.of("log") if m["message"].startswith("Forward pass")]
    assert line.endswith("gradient checkpointing off")


def test_checkpointing_really_recomputes_the_layers(tiny_model_dir: Path) -> None:
    """Each decoder layer's body runs twice per step with it (forward, then again in the backward), once without
    (counted on entry to the layer's MLP: transformers checkpoints the layer's `forward`, so hooks on the layer
    itself stay outside the checkpoint, and the recomputation stops as soon as it has what the backward needs,
    before the MLP returns)."""
    import torch
    from transformers import AutoModelForCausalLM

    from openft.training.model import enable_gradient_checkpointing

    calls = []
    for enabled in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model.train()
        if enabled:
            enable_gradient_checkpointing(model)
        mlp = model.get_decoder().layers[0].mlp
        count = [0]

        def counted(*_: Any, count: list[int] = count) -> None:
            count[0] += 1

        mlp.register_forward_pre_hook(counted)
        ids = torch.tensor([[1, 2, 3, 4, 5]])
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        calls.append(count[0])
    assert calls == [1, 2]
