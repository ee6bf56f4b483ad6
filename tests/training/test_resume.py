"""Exact resume, the heart of the trainer: stopped, killed and resumed runs end bit-identical to straight ones.

Each scenario is a chain of real trainer processes (`python -m openft.training.entrypoint`), as the
worker runs them. Stops and kills land at chosen steps through OPENFT_TRAIN_DEBUG_SIGNALS, which sends
the process a real signal at that step, so the signal handlers and the stop path are the real ones;
`test_external_signal_stops_with_a_checkpoint` also signals from outside at an arbitrary moment.
The chains run two at a time (one torch thread each) to keep the module near 40 seconds.

Covered: LoRA SFT with packing and a validation file (sampled every 2 steps, full at epoch ends) in the
precision `auto` picks on this machine; full fine-tuning in fp32; DPO with LoRA in bf16 autocast.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from openft.trainer_contract import DPO_RESULT_COLUMNS, ExitCode, checkpoint_dir, parse_progress_line
from openft.training import checkpoint as ckpt
from tests.training.conftest import (
    TrainerRun,
    assert_same_tensors,
    job_spec,
    results_rows,
    run_subprocess,
    train_losses,
    write_job,
)

STEPS_PER_EPOCH = 3  # 12 examples, batch 4
TOTAL_STEPS = 6  # 2 epochs
RESUME_JOB = {"precision": "auto"}
"""What every chain adds to `job_spec` (which validates 3 of 4 examples every 2 steps): production's precision."""


def _corrupt_newest_checkpoint_junk(output_dir: Path) -> None:
    """What a crash mid-save can leave: a temp folder, and a step folder without meta.json."""
    root = output_dir / "checkpoints"
    (root / ".tmp-step_000004-999-deadbeef" / "adapter").mkdir(parents=True)
    partial = root / "step_000004"
    shutil.copytree(root / "step_000003", partial)
    (partial / "meta.json").unlink()


class Scenarios:
    """Runs every chain once per module; the tests below check what the chains produced."""

    def __init__(self, tmp: Path, model_dir: Path, data: dict[str, Path], dpo_data: dict[str, Path]):
        self.tmp, self.model_dir, self.data, self.dpo_data = tmp, model_dir, data, dpo_data
        self.runs: dict[str, list[TrainerRun]] = {}
        self.outputs: dict[str, Path] = {}

    def job(self, name: str, **overrides: Any) -> Path:
        spec = job_spec(self.tmp, self.model_dir, self.data, name=name, **{**RESUME_JOB, **overrides})
        self.outputs[name] = Path(spec["output_dir"])
        return write_job(self.tmp / f"{name}-{len(self.runs.get(name, []))}.json", spec)

    def chain(self, name: str, legs: list[tuple[str, dict[str, Any], Callable[[Path], None] | None]]) -> None:
        self.runs[name] = []
        for debug_signals, overrides, before in legs:
            job = self.job(name, **overrides)
            if before is not None:
                before(self.outputs[name])
            self.runs[name].append(run_subprocess(job, debug_signals=debug_signals))

    def run_all(self) -> None:
        full = {"lora": None, "base_learning_rate": 1e-3, "precision": "fp32"}
        dpo = {
            "method": "dpo",
            "dpo": {"beta": 0.2},
            "training_file": str(self.dpo_data["train"]),
            "validation_file": str(self.dpo_data["valid"]),
            "precision": "bf16",
        }
        chains: dict[str, list[tuple[str, dict[str, Any], Callable[[Path], None] | None]]] = {
            "straight": [("", {}, None)],
            # Stopped once, exactly at an epoch end (the epoch checkpoint serves; no second one);
            # resumed with another thread count asked for (the checkpoint's must win).
            "once": [(f"{STEPS_PER_EPOCH}:SIGUSR1", {}, None), ("", {"num_threads": 2}, None)],
            # Stopped twice mid-epoch, with a stop before any new step in between.
            "twice": [("2:SIGUSR1", {}, None), ("2:SIGINT", {}, None), ("5:SIGTERM", {}, None), ("", {}, None)],
            # Stopped before its first step (nothing to save); then killed (kill -9) one step after the
            # first epoch checkpoint, leaving a half-written checkpoint behind.
            "killed": [
                ("0:SIGUSR1", {}, None),
                (f"{STEPS_PER_EPOCH + 1}:SIGKILL", {}, None),
                ("", {}, _corrupt_newest_checkpoint_junk),
            ],
            "full_straight": [("", full, None)],
            "full_resumed": [("2:SIGUSR1", full, None), ("", full, None)],
            "dpo_straight": [("", dpo, None)],
            "dpo_resumed": [("2:SIGUSR1", dpo, None), (f"{STEPS_PER_EPOCH + 1}:SIGKILL", dpo, None), ("", dpo, None)],
        }
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(self.chain, name, legs) for name, legs in chains.items()]:
                future.result()


@pytest.fixture(scope="module")
def scenarios(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
    data_files: dict[str, Path],
    dpo_files: dict[str, Path],
) -> Scenarios:
    found = Scenarios(tmp_path_factory.mktemp("resume"), tiny_model_dir, data_files, dpo_files)
    found.run_all()
    return found


def _assert_identical_to_straight(scenarios: Scenarios, name: str, straight: str = "straight") -> None:
    reference, resumed = scenarios.outputs[straight], scenarios.outputs[name]
    assert scenarios.runs[name][-1].rc == ExitCode.COMPLETED, scenarios.runs[name][-1].stderr[-3000:]
    expected = metric_rows(reference)
    assert [row["step"] for row in expected] == list(range(1, TOTAL_STEPS + 1))
    assert metric_rows(resumed) == expected  # every metric, float ==: bit for bit
    assert results_rows(resumed) == results_rows(reference)
    assert_same_tensors(reference / "model", resumed / "model")


def column(output_dir: Path, name: str) -> dict[int, Any]:
    return {row["step"]: row[name] for row in metric_rows(output_dir)}


def metric_rows(output_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without the wall-clock field (each step once: `train_losses` checks)."""
    train_losses(output_dir)
    lines = (output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "step_seconds"} for line in lines]


# The straight run: messages, files, layout -------------------------------------------------------


def test_straight_run_messages_and_files(scenarios: Scenarios) -> None:
    run, out = scenarios.runs["straight"][0], scenarios.outputs["straight"]
    assert run.rc == ExitCode.COMPLETED, run.stderr[-3000:]
    assert run.stray_lines == []  # library output went to stderr, not into the message channel
    kinds = [m["type"] for m in run.messages if m["type"] != "log"]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    started = run.of("started")[0]
    assert started == {
        "type": "started",
        "total_steps": TOTAL_STEPS,
        "start_step": 0,
        "n_examples": 12,
        "trainable_params": started["trainable_params"],
        "num_threads": 1,
        "resumed_from": None,
        "steps_per_epoch": STEPS_PER_EPOCH,
        "checkpoints": [],
    }
    assert started["trainable_params"] > 0
    metrics = run.of("metrics")
    assert [m["step"] for m in metrics] == list(range(1, TOTAL_STEPS + 1))
    assert [m["epoch"] for m in metrics] == [1, 1, 1, 2, 2, 2]
    assert metrics[-1]["trained_tokens"] > metrics[0]["trained_tokens"] > 0
    assert all(m["step_seconds"] > 0 and m["learning_rate"] > 0 for m in metrics)
    # Warmup (ceil(0.2 × 6) = 2 steps) then linear decay.
    lrs = [m["learning_rate"] for m in metrics]
    assert lrs[0] < lrs[1] == lrs[2] > lrs[3] > lrs[4] > lrs[5]
    assert "full_valid_loss" in metrics[2] and "full_valid_loss" in metrics[5] and "full_valid_loss" not in metrics[0]
    # The sampled validation every eval_every=2 steps: 3 of the 4 examples, so not the full file's value.
    assert [m["step"] for m in metrics if "valid_loss" in m] == [2, 4, 6]
    assert all(0 <= m["valid_mean_token_accuracy"] <= 1 for m in metrics if "valid_loss" in m)
    assert metrics[5]["valid_loss"] != metrics[5]["full_valid_loss"]

    checkpoints = run.of("checkpoint")
    assert [(c["step"], c["epoch"], c["kind"]) for c in checkpoints] == [(3, 1, "epoch"), (6, 2, "epoch")]
    assert checkpoints[0]["metrics"]["full_valid_loss"] == metrics[2]["full_valid_loss"]
    completed = run.last
    assert completed["step"] == TOTAL_STEPS and completed["trained_tokens"] == metrics[-1]["trained_tokens"]
    assert Path(completed["model_path"]) == out / "model"

    warnings = [m["message"] for m in run.of("log") if m["level"] == "warn"]
    assert any("2 example(s)" in w and "truncated (lines 12, 13)" in w for w in warnings), warnings
    assert any("1 example(s)" in w and "skipped (lines 13)" in w for w in warnings), warnings


def test_straight_run_writes_the_documented_layout(scenarios: Scenarios) -> None:
    out = scenarios.outputs["straight"]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == (
        "step,train_loss,train_mean_token_accuracy,valid_loss,valid_mean_token_accuracy,"
        "full_valid_loss,full_valid_mean_token_accuracy"
    )
    rows = results_rows(out)
    assert [r[0] for r in rows] == [str(s) for s in range(1, TOTAL_STEPS + 1)]
    losses = train_losses(out)
    assert [float(r[1]) for r in rows] == [losses[s] for s in range(1, TOTAL_STEPS + 1)]  # repr round-trips
    assert rows[0][3:] == ["", "", "", ""] and rows[2][5] != "" and rows[2][3] == ""
    assert rows[1][3] != "" and rows[1][5] == "" and rows[5][3] != "" and rows[5][5] != ""

    for step in (3, 6):
        folder = checkpoint_dir(out, step)
        assert ckpt.verify(ckpt.Checkpoint(step, folder)) is None
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        assert (folder / "adapter" / "adapter_config.json").is_file()
        assert (folder / "state" / "trainer_state.pt").is_file()
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["kind"] == "epoch" and meta["step"] == step
        assert meta["metrics"]["valid_loss"] == (None if step == 3 else column(out, "valid_loss")[step])
        assert set(meta["metrics"]) == {
            "step",
            "train_loss",
            "train_mean_token_accuracy",
            "valid_loss",
            "valid_mean_token_accuracy",
            "full_valid_loss",
            "full_valid_mean_token_accuracy",
        }
        progress = json.loads((folder / "state" / "progress.json").read_text())
        assert progress["num_threads"] == 1 and progress["step"] == step and progress["packing"] is True
        assert progress["precision"] in ("fp32", "bf16")  # what `auto` picked on this machine
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_final_adapter_loads_with_peft(scenarios: Scenarios, tiny_model_dir: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = scenarios.outputs["straight"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, out / "model")
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.equal(tuned, plain)  # the adapter was trained away from its zero init


# Exact resume ----------------------------------------------------------------------------------


def test_stopped_once_at_an_epoch_end_resumes_exactly(scenarios: Scenarios) -> None:
    first, second = scenarios.runs["once"]
    assert first.rc == ExitCode.STOPPED, first.stderr[-3000:]
    assert first.last["type"] == "stopped" and first.last["step"] == STEPS_PER_EPOCH
    # The epoch checkpoint of that very step serves as the pause checkpoint: no second one.
    assert [c["kind"] for c in first.of("checkpoint")] == ["epoch"]
    assert first.last["checkpoint"] == first.of("checkpoint")[0]["path"]
    assert second.of("started")[0]["start_step"] == STEPS_PER_EPOCH
    assert second.of("started")[0]["num_threads"] == 1  # the checkpoint's, not the job's 2
    assert any("threads" in m["message"] for m in second.of("log") if m["level"] == "warn")
    _assert_identical_to_straight(scenarios, "once")


def test_stopped_twice_resumes_exactly(scenarios: Scenarios) -> None:
    first, idle, third, last = scenarios.runs["twice"]
    assert (first.rc, idle.rc, third.rc) == (ExitCode.STOPPED,) * 3
    assert first.last["step"] == 2 and first.of("checkpoint")[0]["kind"] == "pause"
    # Stopped again before training any step: the existing checkpoint is reported, none written.
    assert idle.of("checkpoint") == []
    assert idle.last == {"type": "stopped", "step": 2, "checkpoint": first.last["checkpoint"]}
    # meta.json's epoch is the 1-based epoch of the last step trained, also for a mid-epoch checkpoint.
    assert [(c["step"], c["epoch"]) for c in third.of("started")[0]["checkpoints"]] == [(2, 1)]
    assert third.last["step"] == 5 and [c["kind"] for c in third.of("checkpoint")] == ["epoch", "pause"]
    assert last.of("started")[0]["resumed_from"].endswith("step_000005")
    assert [m["step"] for m in last.of("metrics")] == [6]
    _assert_identical_to_straight(scenarios, "twice")


def test_killed_after_first_epoch_checkpoint_resumes_exactly(scenarios: Scenarios) -> None:
    _, killed, resumed = scenarios.runs["killed"]
    assert killed.rc == -signal.SIGKILL
    assert [m["step"] for m in killed.of("metrics")] == [1, 2, 3, 4]
    assert resumed.of("started")[0]["start_step"] == STEPS_PER_EPOCH
    damaged = [m["message"] for m in resumed.of("log") if m["level"] == "warn" and "damaged" in m["message"]]
    assert len(damaged) == 1 and "step 4" in damaged[0]
    out = scenarios.outputs["killed"]
    assert not list((out / "checkpoints").glob(".tmp-*"))
    _assert_identical_to_straight(scenarios, "killed")  # step 4 is in metrics.jsonl once, not twice


def test_stop_before_the_first_step_leaves_nothing(scenarios: Scenarios) -> None:
    run, killed, _ = scenarios.runs["killed"]
    assert run.rc == ExitCode.STOPPED
    assert run.last == {"type": "stopped", "step": 0, "checkpoint": None}
    assert run.of("checkpoint") == []
    assert killed.of("started")[0]["resumed_from"] is None  # and the next run starts from scratch


def test_full_fine_tuning_resumes_exactly(scenarios: Scenarios) -> None:
    straight = scenarios.runs["full_straight"][0]
    assert straight.rc == ExitCode.COMPLETED, straight.stderr[-3000:]
    first = scenarios.runs["full_resumed"][0]
    assert first.rc == ExitCode.STOPPED and first.last["step"] == 2
    folder = Path(first.last["checkpoint"])
    assert (folder / "model" / "config.json").is_file() and (folder / "model" / "model.safetensors").is_file()
    assert (folder / "model" / "tokenizer.json").is_file()
    _assert_identical_to_straight(scenarios, "full_resumed", straight="full_straight")
    # Full fine-tuning changed the base weights themselves (not just an adapter).
    assert (scenarios.outputs["full_straight"] / "model" / "config.json").is_file()


def test_dpo_with_lora_resumes_exactly(scenarios: Scenarios) -> None:
    straight = scenarios.runs["dpo_straight"][0]
    assert straight.rc == ExitCode.COMPLETED, straight.stderr[-3000:]
    stopped, killed, _ = scenarios.runs["dpo_resumed"]
    assert stopped.rc == ExitCode.STOPPED and stopped.last["step"] == 2
    assert killed.rc == -signal.SIGKILL and killed.of("started")[0]["start_step"] == 2
    _assert_identical_to_straight(scenarios, "dpo_resumed", straight="dpo_straight")


def test_dpo_run_reports_preference_metrics(scenarios: Scenarios) -> None:
    run, out = scenarios.runs["dpo_straight"][0], scenarios.outputs["dpo_straight"]
    assert any("bf16" in m["message"] for m in run.of("log") if m["message"].startswith("Forward pass"))
    metrics = run.of("metrics")
    # Step 1 starts from the reference itself (LoRA's B is zero): every reward 0, the loss log 2.
    first = metrics[0]
    assert math.isclose(first["train_loss"], math.log(2), rel_tol=1e-6)
    assert first["train_chosen_reward"] == first["train_rejected_reward"] == first["train_reward_margin"] == 0
    assert metrics[-1]["train_reward_margin"] > 0 and metrics[-1]["train_loss"] < math.log(2)  # it learns
    assert [m["step"] for m in metrics if "valid_reward_margin" in m] == [2, 4, 6]
    assert "full_valid_preference_accuracy" in metrics[2] and "train_mean_token_accuracy" not in metrics[0]
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == DPO_RESULT_COLUMNS
    meta = ckpt.Checkpoint(6, checkpoint_dir(out, 6)).meta()
    assert tuple(meta["metrics"]) == DPO_RESULT_COLUMNS


def _resume_copy_of_straight(scenarios: Scenarios, tmp: Path) -> Path:
    """The straight run's output as it stood at its first epoch checkpoint, under a new job file."""
    out = tmp / "copy"
    shutil.copytree(scenarios.outputs["straight"], out)
    for path in (out / "model", checkpoint_dir(out, TOTAL_STEPS)):
        shutil.rmtree(path)
    (out / "results.csv").unlink()
    spec = job_spec(tmp, scenarios.model_dir, scenarios.data, name="copy", **RESUME_JOB)
    return write_job(tmp / "job.json", spec)


@pytest.mark.parametrize("drop", [None, "rng", "optimizer"])
def test_each_piece_of_state_matters(
    scenarios: Scenarios, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, drop: str | None
) -> None:
    """The comparison can fail: a resume that skips restoring the RNG or the optimizer ends elsewhere."""
    from tests.training.conftest import run_in_process

    job = _resume_copy_of_straight(scenarios, tmp_path)
    if drop == "rng":
        monkeypatch.setattr(ckpt, "restore_rng", lambda state: None)
    if drop == "optimizer":
        monkeypatch.setattr("torch.optim.AdamW.load_state_dict", lambda self, state: None)
    run = run_in_process(job)
    assert run.rc == ExitCode.COMPLETED, run.messages[-1]
    assert run.of("started")[0]["start_step"] == STEPS_PER_EPOCH
    expected, got = train_losses(scenarios.outputs["straight"]), train_losses(tmp_path / "copy")
    assert [got[s] for s in range(1, 4)] == [expected[s] for s in range(1, 4)]  # kept from before the resume
    if drop is None:  # in this process too, a proper resume is exact
        assert got == expected
    else:
        assert all(got[s] != expected[s] for s in range(5, TOTAL_STEPS + 1)), (drop, got, expected)


# A real signal from outside ------------------------------------------------------------------------


def test_external_signal_stops_with_a_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, data_files: dict[str, Path]
) -> None:
    hyper = {"n_epochs": 200, "batch_size": 4, "learning_rate_multiplier": 1.0}
    spec = job_spec(tmp_path, tiny_model_dir, data_files, hyperparameters=hyper, validation_file=None)
    job = write_job(tmp_path / "job.json", spec)
    proc = subprocess.Popen(
        [sys.executable, "-m", "openft.training.entrypoint", str(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.stdout is not None
    messages = []
    for line in proc.stdout:
        message = parse_progress_line(line)
        assert message is not None, line
        messages.append(message)
        if message["type"] == "metrics" and message["step"] == 2:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == ExitCode.STOPPED
    stopped = messages[-1]
    assert stopped["type"] == "stopped" and 2 <= stopped["step"] < 600
    folder = Path(stopped["checkpoint"])
    assert folder == checkpoint_dir(Path(spec["output_dir"]), stopped["step"])
    assert ckpt.verify(ckpt.Checkpoint(stopped["step"], folder)) is None
    assert len(train_losses(Path(spec["output_dir"]))) == stopped["step"]
