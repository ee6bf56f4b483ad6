"""The trainer's outcomes, in this process (fast): failures with their codes, accumulation, pruning, metrics cadence."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from openft.trainer_contract import ExitCode
from openft.training import checkpoint as ckpt
from openft.training.packing import build_rows
from openft.training.recipe import TrainingRecipe
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
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
    def explode(self: TrainingRecipe, batch: Any) -> Any:
        raise error

    monkeypatch.setattr(TrainingRecipe, "_train_step", explode)
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


# Packing, validation, timing ---------------------------------------------------------------------

NO_DROPOUT = {"r": 4, "alpha": 8, "dropout": 0.0}


def test_packed_run_matches_unpacked_run(make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same data order, steps and loss definition: only the rows differ, so the losses agree to rounding.

    Without LoRA dropout: with it, packed rows draw their dropout masks in another layout.
    """
    from openft.training import forward

    layouts: list[tuple[int, int]] = []  # (rows, sequences) of every forward pass

    def spy(sequences: Any, pad_id: int, *, packed: bool, one_row: bool = False) -> Any:
        rows = build_rows(sequences, pad_id, packed=packed, one_row=one_row)
        layouts.append((rows.input_ids.shape[0], rows.n_sequences))
        return rows

    monkeypatch.setattr(forward, "build_rows", spy)
    packed = run_in_process(make_job("packed", lora=NO_DROPOUT, packing=True, micro_batch_size=4))
    assert any(n_rows < n_sequences for n_rows, n_sequences in layouts)  # some rows did hold several examples
    unpacked = run_in_process(make_job("unpacked", lora=NO_DROPOUT, packing=False, micro_batch_size=4))
    assert packed.rc == unpacked.rc == ExitCode.COMPLETED
    assert any("packing on" in m["message"] for m in packed.of("log"))
    assert any("packing off" in m["message"] for m in unpacked.of("log"))
    for name in ("train_loss", "train_mean_token_accuracy", "valid_loss", "full_valid_loss"):
        a = [m.get(name) for m in packed.of("metrics")]
        b = [m.get(name) for m in unpacked.of("metrics")]
        assert [x is None for x in a] == [x is None for x in b]
        for x, y in zip(a, b, strict=True):
            assert x is None or math.isclose(x, y, rel_tol=1e-5), (name, a, b)
    assert packed.last["trained_tokens"] == unpacked.last["trained_tokens"]  # padding is not counted


def test_sampled_validation_cadence(make_job: Any) -> None:
    hyper = {"n_epochs": 5, "batch_size": 4, "learning_rate_multiplier": 1.0}  # 15 steps
    auto = run_in_process(make_job("auto", hyperparameters=hyper, eval_every=None, eval_samples=2))
    assert [m["step"] for m in auto.of("metrics") if "valid_loss" in m] == [2, 4, 6, 8, 10, 12, 14, 15]
    every5 = run_in_process(make_job("every5", hyperparameters=hyper, eval_every=5, eval_samples=2))
    sampled = [m for m in every5.of("metrics") if "valid_loss" in m]
    assert [m["step"] for m in sampled] == [5, 10, 15]
    by_step = {m["step"]: m["valid_loss"] for m in auto.of("metrics") if "valid_loss" in m}
    assert [m["valid_loss"] for m in sampled] != [by_step[10], by_step[10], by_step[15]]  # it moves with training
    assert all("valid_loss" not in m for m in run_in_process(make_job("none", validation_file=None)).of("metrics"))


def test_sampled_validation_changes_no_training_result(make_job: Any, tmp_path: Path) -> None:
    with_valid = run_in_process(make_job("with", eval_every=1, eval_samples=2))
    without = run_in_process(make_job("without", validation_file=None))
    assert with_valid.rc == without.rc == ExitCode.COMPLETED
    assert train_losses(tmp_path / "with") == train_losses(tmp_path / "without")  # bit for bit: no RNG drawn
    assert_same_tensors(tmp_path / "with" / "model", tmp_path / "without" / "model")


def test_step_seconds_include_evaluation_and_checkpoint_time(make_job: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker's ETA is step_seconds × steps left, so step_seconds must carry the time spent between steps."""
    from openft.training import recipe

    clock = {"now": 0.0}

    class FakeTime:
        @staticmethod
        def perf_counter() -> float:
            clock["now"] += 1.0  # every look at the clock costs a second
            return clock["now"]

        @staticmethod
        def monotonic() -> float:  # the periodic-checkpoint clock (no checkpoint_every_minutes here)
            return 0.0

    write = ckpt.write_checkpoint

    def slow_checkpoint(*args: Any, **kwargs: Any) -> Any:
        clock["now"] += 100.0
        return write(*args, **kwargs)

    monkeypatch.setattr(recipe, "time", FakeTime)
    monkeypatch.setattr(ckpt, "write_checkpoint", slow_checkpoint)
    run = run_in_process(make_job(validation_file=None, metrics_every=2))
    assert run.rc == ExitCode.COMPLETED
    seconds = {m["step"]: m["step_seconds"] for m in run.of("metrics")}
    assert seconds == {2: 1.0, 3: 1.0, 4: 101.0, 6: 1.0}  # the epoch-end checkpoint after step 3 lands on step 4


# DPO ---------------------------------------------------------------------------------------------


@pytest.fixture
def make_dpo_job(make_job: Any, dpo_files: dict[str, Path]) -> Any:
    def make(name: str = "dpo", **overrides: Any) -> Path:
        dpo = {
            "method": "dpo",
            "dpo": {"beta": 0.5},
            "training_file": str(dpo_files["train"]),
            "validation_file": str(dpo_files["valid"]),
        }
        return make_job(name, **{**dpo, **overrides})

    return make


def test_dpo_gradient_accumulation_matches_one_big_batch(make_dpo_job: Any, tmp_path: Path) -> None:
    one = run_in_process(make_dpo_job("micro1", micro_batch_size=1, lora=NO_DROPOUT))
    four = run_in_process(make_dpo_job("micro4", micro_batch_size=4, lora=NO_DROPOUT, packing=False))
    assert one.rc == four.rc == ExitCode.COMPLETED, (one.last, four.last)
    for a, b in zip(one.of("metrics"), four.of("metrics"), strict=True):
        for name in ("train_loss", "train_reward_margin", "train_chosen_reward", "train_preference_accuracy"):
            # Rewards are differences of fp32 log-prob sums (tens): rounding of ~1e-6 is all that may differ.
            assert math.isclose(a[name], b[name], rel_tol=1e-5, abs_tol=1e-5), (name, a, b)
    assert one.of("started")[0]["n_examples"] == 12  # pairs
    first = one.of("metrics")[0]
    assert math.isclose(first["train_loss"], math.log(2), rel_tol=1e-6)  # the policy starts as the reference
    assert one.of("metrics")[-1]["train_loss"] < math.log(2)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_dpo_continuing_a_fine_tuned_adapter_measures_against_it(
    make_job: Any, make_dpo_job: Any, tmp_path: Path
) -> None:
    """SFT, then DPO from it: the reference is the fine-tuned model the DPO job starts from, not the base."""
    one_epoch = {"hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1}}
    # No LoRA dropout (the continued adapter keeps its settings): the policy's first pass then equals the reference's.
    assert run_in_process(make_job("sft", lora=NO_DROPOUT, **one_epoch)).rc == ExitCode.COMPLETED
    adapter = tmp_path / "sft" / "model"
    finetuned = {"name": "ft:tiny:org::sft", "source": "finetune", "path": str(adapter)}

    run = run_in_process(make_dpo_job("dpo", base_model=finetuned, **one_epoch))
    assert run.rc == ExitCode.COMPLETED, run.last
    first = run.of("metrics")[0]
    assert math.isclose(first["train_loss"], math.log(2), rel_tol=1e-6) and first["train_reward_margin"] == 0
    saved = tmp_path / "dpo" / "model"
    assert [p.name for p in saved.iterdir() if p.is_dir()] == []  # the trained adapter only, not the reference copy
    before, after = load_tensors(adapter), load_tensors(saved)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)

    full = run_in_process(make_dpo_job("dpo-full", base_model=finetuned, lora=None, **one_epoch))
    assert full.rc == ExitCode.COMPLETED, full.last
    assert math.isclose(full.of("metrics")[0]["train_loss"], math.log(2), rel_tol=1e-6)  # a frozen copy as reference


def test_dpo_needs_preference_data(make_dpo_job: Any, data_files: dict[str, Path]) -> None:
    message = failed(run_in_process(make_dpo_job(training_file=str(data_files["train"]))))
    assert message["code"] == "invalid_file_format" and message["param"] == "training_file"
    assert "line 1" in message["message"]


def test_a_resume_keeps_the_checkpoints_precision_and_packing(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Precision and packing change float sums: a resume uses the checkpoint's, whatever the job now says."""
    straight = run_in_process(make_job("straight", precision="fp32", packing=False))
    monkeypatch.setenv("OPENFT_TRAIN_DEBUG_SIGNALS", "2:SIGUSR1")
    assert run_in_process(make_job("resumed", precision="fp32", packing=False)).rc == ExitCode.STOPPED
    monkeypatch.delenv("OPENFT_TRAIN_DEBUG_SIGNALS")
    resumed = run_in_process(make_job("resumed", precision="bf16", packing=True))
    assert straight.rc == resumed.rc == ExitCode.COMPLETED
    warnings = [m["message"] for m in resumed.of("log") if m["level"] == "warn"]
    assert any("checkpoint's precision (fp32) and packing (off)" in w for w in warnings), warnings
    assert train_losses(tmp_path / "resumed") == train_losses(tmp_path / "straight")
