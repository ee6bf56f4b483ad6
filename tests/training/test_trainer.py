"""The trainer's outcomes, in this process (fast): failures with their codes, accumulation, pruning, metrics cadence."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.jobspec import ExitCode
from openft.training import checkpoint as ckpt
from openft.training.recipe import SupervisedRecipe
from tests.training.conftest import (
    TrainerRun,
    job_spec,
    load_tensors,
    run_in_process,
    train_losses,
    write_job,
    write_jsonl,
)


@pytest.fixture
def make_job(tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]) -> Any:
    def make(name: str = "out", **overrides: Any) -> Path:
        spec = job_spec(tmp_path, tiny_model_dir, data_files, name=name, **overrides)
        return write_job(tmp_path / f"{name}.json", spec)

    return make


def failed(run: TrainerRun) -> dict[str, Any]:
    assert run.rc == ExitCode.FAILED, run.messages[-3:]
    assert run.last["type"] == "failed"
    return run.last


def test_gradient_accumulation_matches_one_big_batch(make_job: Any, tmp_path: Path) -> None:
    """Loss = summed token losses / trainable tokens of the whole batch, however it is split."""
    one = run_in_process(make_job("micro1", micro_batch_size=1, lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    four = run_in_process(make_job("micro4", micro_batch_size=4, lora={"r": 4, "alpha": 8, "dropout": 0.0}))
    assert one.rc == four.rc == ExitCode.COMPLETED
    a, b = train_losses(tmp_path / "micro1"), train_losses(tmp_path / "micro4")
    assert a.keys() == b.keys()
    for step in a:
        assert math.isclose(a[step], b[step], rel_tol=1e-5), (step, a[step], b[step])
    assert one.last["trained_tokens"] == four.last["trained_tokens"]
    assert a[6] < a[1]  # and it learns


def test_keep_checkpoints_prunes_the_oldest_and_metrics_every(make_job: Any, tmp_path: Path) -> None:
    run = run_in_process(make_job(keep_checkpoints=1, metrics_every=2, validation_file=None))
    assert run.rc == ExitCode.COMPLETED
    assert [m["step"] for m in run.of("metrics")] == [2, 3, 4, 6]  # every 2nd, epoch ends, the last
    assert "full_valid_loss" not in run.of("metrics")[1]
    removed = run.of("checkpoint_removed")
    assert [(r["step"], Path(r["path"]).name) for r in removed] == [(3, "step_000003")]
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "out")] == [6]
    assert len(train_losses(tmp_path / "out")) == 6  # metrics.jsonl still has every step


def test_invalid_training_file_fails_with_its_line(make_job: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
        '{"messages": [{"role": "user", "content": "a"}]}\n'
    )
    message = failed(run_in_process(make_job(training_file=str(bad))))
    assert message["code"] == "invalid_file_format"
    assert message["param"] == "training_file" and "line 2" in message["message"]


def test_invalid_validation_file_names_it(make_job: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": \xff}\n')
    message = failed(run_in_process(make_job(validation_file=str(bad))))
    assert message["code"] == "invalid_encoding" and message["param"] == "validation_file"


def test_no_trainable_example_left_fails(make_job: Any) -> None:
    message = failed(run_in_process(make_job(max_seq_len=8)))
    assert message["code"] == "invalid_file_format" and message["param"] == "training_file"
    assert "8 tokens" in message["message"]


def test_checkpoint_of_other_data_or_settings_is_refused(make_job: Any, tmp_path: Path, data_files: Any) -> None:
    one_epoch = {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}}
    assert run_in_process(make_job(**one_epoch)).rc == ExitCode.COMPLETED
    assert run_in_process(make_job(**one_epoch)).rc == ExitCode.COMPLETED  # the same job resumes (at its end)
    assert failed(run_in_process(make_job(**one_epoch, seed=99)))["code"] == "checkpoint_mismatch"
    lines = [json.loads(line) for line in data_files["train"].read_text().splitlines()]
    changed = write_jsonl(tmp_path / "changed.jsonl", lines[:-1])
    assert failed(run_in_process(make_job(**one_epoch, training_file=str(changed))))["code"] == "checkpoint_mismatch"


def test_divergence_fails_cleanly(make_job: Any) -> None:
    message = failed(run_in_process(make_job(base_learning_rate=1e30, max_grad_norm=None)))
    assert message["code"] == "training_diverged"


def test_missing_base_model(make_job: Any, tmp_path: Path) -> None:
    message = failed(
        run_in_process(make_job(base_model={"name": "gone", "source": "local", "path": str(tmp_path / "x")}))
    )
    assert message["code"] == "model_not_found" and message["param"] == "model"


@pytest.mark.parametrize(
    ("error", "code"),
    [(torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory"), (RuntimeError("boom"), "training_error")],
)
def test_unexpected_errors_become_failed_messages(
    make_job: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, code: str
) -> None:
    def explode(self: SupervisedRecipe, batch: Any) -> Any:
        raise error

    monkeypatch.setattr(SupervisedRecipe, "_train_step", explode)
    message = failed(run_in_process(make_job()))
    assert message["code"] == code
    assert str(error) in message["message"]


def test_unreadable_job_file_is_a_usage_error(tmp_path: Path) -> None:
    job = tmp_path / "job.json"
    job.write_text('{"job_id": "x"}')
    run = run_in_process(job)
    assert run.rc == ExitCode.USAGE
    assert run.last["type"] == "failed" and run.last["code"] == "invalid_job_file"
    assert run_in_process(tmp_path / "missing.json").rc == ExitCode.USAGE


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_continuing_from_a_fine_tuned_adapter(make_job: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    one_epoch = {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}}
    assert run_in_process(make_job("first", **one_epoch)).rc == ExitCode.COMPLETED
    adapter = tmp_path / "first" / "model"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    finetuned = {"name": "ft:tiny:org::abc", "source": "finetune", "path": str(adapter)}

    lora = run_in_process(make_job("again", base_model=finetuned, **one_epoch))
    assert lora.rc == ExitCode.COMPLETED, lora.last
    assert any("continuing the fine-tuned adapter" in m["message"] for m in lora.of("log"))
    before, after = load_tensors(adapter), load_tensors(tmp_path / "again" / "model")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    full = run_in_process(make_job("full", base_model=finetuned, lora=None, **one_epoch))
    assert full.rc == ExitCode.COMPLETED, full.last
    assert any("merged the fine-tuned adapter" in m["message"] for m in full.of("log"))
    assert (tmp_path / "full" / "model" / "config.json").is_file()
