"""With LoRA under bf16 the frozen base lives in bf16 (half the memory); what is trained stays fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from openft.trainer_contract import ExitCode, TrainJobSpec
from openft.training.model import frozen_dtype, load_model
from tests.training.conftest import job_spec, run_in_process, write_job


@pytest.fixture
def make_spec(tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]) -> Any:
    def make(name: str, **overrides: Any) -> dict[str, Any]:
        return job_spec(tmp_path, tiny_model_dir, data_files, name=name, **overrides)

    return make


def test_lora_under_bf16_keeps_the_base_in_bf16_and_the_adapter_in_fp32(make_spec: Any) -> None:
    spec = TrainJobSpec.model_validate(make_spec("lora", precision="bf16"))
    assert frozen_dtype(spec, "bf16") == "bf16"
    torch.manual_seed(0)
    loaded = load_model(spec, frozen="bf16")
    frozen = {p.dtype for p in loaded.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in loaded.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}


def test_fp32_and_full_fine_tuning_keep_every_weight_fp32(make_spec: Any) -> None:
    lora = TrainJobSpec.model_validate(make_spec("lora", precision="fp32"))
    full = TrainJobSpec.model_validate(make_spec("full", precision="bf16", lora=None))
    assert frozen_dtype(lora, "fp32") == "fp32" and frozen_dtype(full, "bf16") == "fp32"
    loaded = load_model(full, frozen=frozen_dtype(full, "bf16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}


def test_a_bf16_lora_run_keeps_its_fast_paths_and_learns(make_spec: Any, tmp_path: Path) -> None:
    run = run_in_process(write_job(tmp_path / "run.json", make_spec("run", precision="bf16", validation_file=None)))
    assert run.rc == ExitCode.COMPLETED
    logs = [m["message"] for m in run.of("log")]
    assert any(line.startswith("Loaded base model") and "frozen weights bf16" in line for line in logs)
    [forward] = [line for line in logs if line.startswith("Forward pass")]
    assert "packing on" in forward and "at target tokens only" in forward  # the checks still pass in bf16
    losses = [m["train_loss"] for m in run.of("metrics")]
    assert losses[-1] < losses[0]
