"""Issue-4 options through the official SDK: LoRA settings, full fine-tuning, DPO, a validation file,
continued fine-tuning and the W&B integration — each ends in a usable model."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, preference_examples, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import all_events, wait_for_status

MESSAGES = [{"role": "user", "content": "How fast does it boil?"}]


def _upload(client: OpenAI, rows: list[Any]) -> str:
    return client.files.create(file=("d.jsonl", jsonl_bytes(rows)), purpose="fine-tune").id


def _train(
    client: OpenAI, training: str, *, kind: str = "supervised", model: str = TINY_MODEL_NAME, **options: Any
) -> Any:
    hyperparameters = {"n_epochs": 2, "batch_size": 4, **options.pop("hyperparameters", {})}
    job = client.fine_tuning.jobs.create(
        model=model,
        training_file=training,
        method={"type": kind, kind: {"hyperparameters": hyperparameters}},
        **options,
    )
    return wait_for_status(client, job.id, {"succeeded"})


def _rows(client: OpenAI, job: Any) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))


def _chat(client: OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0)
    return reply.choices[0].message.content or ""


@pytest.mark.e2e
def test_option_errors_are_400_with_param(client: OpenAI) -> None:
    training = _upload(client, valid_examples(12))
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"epochs": 2}}},
            "method.supervised.hyperparameters.epochs",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"fine_tuning_mode": "full", "lora_rank": 4}}},
            "method.supervised.hyperparameters",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"lora_rank": 0}}},
            "method.supervised.hyperparameters.lora_rank",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"max_seq_length": 4}}},
            "method.supervised.hyperparameters.max_seq_length",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"precision": "fp16"}}},
            "method.supervised.hyperparameters.precision",
        ),
        (
            {"type": "supervised", "supervised": {"hyperparameters": {"fine_tuning_mode": "qlora4"}}},
            "method.supervised.hyperparameters.fine_tuning_mode",
        ),
        ({"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}, "method.dpo.hyperparameters.beta"),
        ({"type": "dpo", "supervised": {}}, "method.supervised"),
    ]
    for method, param in cases:
        with pytest.raises(openai.BadRequestError) as excinfo:
            client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training, method=method)  # type: ignore[arg-type]
        assert excinfo.value.param == param, (method, excinfo.value.message)


@pytest.mark.e2e
def test_lora_settings_and_full_fine_tuning(client: OpenAI, server: RunningServer) -> None:
    training = _upload(client, valid_examples(12))
    lora = _train(
        client,
        training,
        hyperparameters={
            "lora_rank": 4,
            "lora_alpha": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "max_seq_length": 64,
            "packing": False,
            "precision": "fp32",
            "gradient_checkpointing": True,
        },
    )
    config = json.loads((server.data_dir / "jobs" / lora.id / "model" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert lora.method.supervised.hyperparameters.lora_rank == 4  # the documented extension is echoed back
    spec = json.loads((server.data_dir / "jobs" / lora.id / "job.json").read_text())
    assert spec["precision"] == "fp32" and spec["packing"] is False and spec["max_seq_len"] == 64
    assert spec["gradient_checkpointing"] is True
    events = [e.message for e in client.fine_tuning.jobs.list_events(lora.id, limit=100)]
    assert any(m.startswith("Forward pass") and m.endswith("gradient checkpointing on") for m in events)
    full = _train(client, training, hyperparameters={"fine_tuning_mode": "full"})
    model_dir = server.data_dir / "jobs" / full.id / "model"
    assert (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists()
    assert isinstance(_chat(client, full.fine_tuned_model), str)
    assert _chat(client, lora.fine_tuned_model) is not None


@pytest.mark.e2e
def test_qlora_job_is_served_and_exported_on_the_unquantized_base(
    client: OpenAI, server: RunningServer, models_dir: Path, tmp_path: Path
) -> None:
    """A QLoRA job trains against a 4-bit base; chat and `export --merged` use the plain base with its adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    training = _upload(client, valid_examples(12))
    job = _train(client, training, hyperparameters={"fine_tuning_mode": "qlora", "lora_rank": 4, "n_epochs": 1})
    assert job.method.supervised.hyperparameters.fine_tuning_mode == "qlora"
    events = [e.message for e in all_events(client, job.id)]
    assert any("4-bit NF4 with double quantization" in m for m in events)
    adapter = server.data_dir / "jobs" / job.id / "model"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and Path(config["base_model_name_or_path"]).name == TINY_MODEL_NAME
    assert "quantization" not in json.dumps(config)
    assert isinstance(_chat(client, job.fine_tuned_model), str)  # served: the base from the catalog + adapter

    out = tmp_path / "merged"
    command = [sys.executable, "-m", "openft", "export", job.fine_tuned_model, "--out", str(out), "--merged"]
    command += ["--data-dir", str(server.data_dir), "--models-dir", str(models_dir)]
    subprocess.run(command, check=True, capture_output=True)
    merged_config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in merged_config
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}  # full-precision weights, nothing 4-bit
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models_dir / TINY_MODEL_NAME), adapter)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, plain(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.e2e
def test_dpo_job(client: OpenAI) -> None:
    training = _upload(client, preference_examples(12))
    job = _train(client, training, kind="dpo", hyperparameters={"beta": "auto"})
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1
    rows = _rows(client, job)
    assert {"train_loss", "train_reward_margin", "train_preference_accuracy"} <= set(rows[0])
    assert len(rows) == 6 and all(float(r["train_loss"]) > 0 for r in rows)
    metrics = [e for e in all_events(client, job.id) if e.type == "metrics"]
    assert "train_reward_margin" in metrics[-1].data
    assert _chat(client, job.fine_tuned_model) is not None
    chat_data = _upload(client, valid_examples(12))  # chat data in a DPO job fails validation
    bad = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=chat_data, method={"type": "dpo"})
    failed = wait_for_status(client, bad.id, {"failed"})
    assert failed.error.code == "invalid_file_format" and "line 1:" in failed.error.message


@pytest.mark.e2e
def test_validation_metrics_in_results_events_and_checkpoints(client: OpenAI) -> None:
    training, validation = _upload(client, valid_examples(12)), _upload(client, valid_examples(5))
    job = _train(client, training, validation_file=validation)
    rows = _rows(client, job)
    assert any(r["valid_loss"] for r in rows)
    assert [bool(r["full_valid_loss"]) for r in rows] == [False, False, True, False, False, True]  # epoch ends
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert all(c.metrics.full_valid_loss is not None for c in checkpoints)


@pytest.mark.e2e
def test_continued_fine_tuning_from_a_model_and_a_checkpoint(client: OpenAI) -> None:
    training = _upload(client, valid_examples(12))
    parent = _train(client, training, suffix="parent")
    checkpoint = next(iter(client.fine_tuning.jobs.checkpoints.list(parent.id))).fine_tuned_model_checkpoint
    for start in (parent.fine_tuned_model, checkpoint):
        child = _train(client, training, model=start, suffix="child")
        assert child.model == start and child.fine_tuned_model.startswith(f"ft:{TINY_MODEL_NAME}:")
        assert _chat(client, child.fine_tuned_model) is not None
    full_parent = _train(client, training, hyperparameters={"fine_tuning_mode": "full"})
    lora_child = _train(client, training, model=full_parent.fine_tuned_model)
    assert _chat(client, lora_child.fine_tuned_model) is not None
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.fine_tuning.jobs.create(model="ft:unknown:x::12345678", training_file=training)
    assert excinfo.value.param == "model"


@pytest.mark.e2e
def test_wandb_integration_logs_offline_into_the_job_folder(client: OpenAI, server: RunningServer) -> None:
    training = _upload(client, valid_examples(12))
    job = _train(client, training, integrations=[{"type": "wandb", "wandb": {"project": "openft-test", "tags": ["t"]}}])
    warnings = [e.message for e in all_events(client, job.id) if e.level == "warn"]
    assert any("W&B" in m and "offline" in m for m in warnings)
    assert (server.data_dir / "jobs" / job.id / "wandb").is_dir()
