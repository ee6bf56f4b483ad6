"""Exact pause and resume through the API: same per-step losses and bit-identical weights as a straight run."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import all_events, wait_for, wait_for_status

HYPERPARAMETERS = {"n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 2.0}  # 24 × 10 = 240 steps


def _create(client: OpenAI, training_id: str) -> str:
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training_id,
        seed=1234,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
    )
    return job.id


def _losses(client: OpenAI, job_id: str) -> list[str]:
    job = client.fine_tuning.jobs.retrieve(job_id)
    text = client.files.content(job.result_files[0]).text
    return [row["train_loss"] for row in csv.DictReader(io.StringIO(text))]


def _weights(server: RunningServer, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(server.data_dir / "jobs" / job_id / "model" / "adapter_model.safetensors")


def _pause_once(client: OpenAI, job_id: str, after_step: int) -> int:
    wait_for(
        lambda: (
            client.fine_tuning.jobs.retrieve(job_id).status == "running"
            and any(
                e.type == "metrics" and e.data["step"] > after_step
                for e in client.fine_tuning.jobs.list_events(job_id, limit=5)
            )
        ),
        what=f"step > {after_step}",
    )
    requested = time.monotonic()
    pausing = client.fine_tuning.jobs.pause(job_id)
    assert pausing.status == "pausing"
    paused = wait_for_status(client, job_id, {"paused"})
    assert paused.estimated_finish is None and paused.trained_tokens
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    step = checkpoints[0].step_number
    assert step > after_step and step < 240, "the pause must land mid-run for this test to mean anything"
    print(f"pause request → paused: {time.monotonic() - requested:.2f}s at step {step}")
    return step


@pytest.mark.e2e
def test_paused_and_resumed_job_matches_straight_run_bit_for_bit(client: OpenAI, server: RunningServer) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune")
    straight = _create(client, training.id)
    wait_for_status(client, straight, {"succeeded"})

    interrupted = _create(client, training.id)
    first = _pause_once(client, interrupted, after_step=2)
    with pytest.raises(Exception) as excinfo:  # a paused job cannot be paused again
        client.fine_tuning.jobs.pause(interrupted)
    assert getattr(excinfo.value, "status_code", None) == 409
    resumed = client.fine_tuning.jobs.resume(interrupted)
    assert resumed.status in ("queued", "running")
    second = _pause_once(client, interrupted, after_step=first + 5)
    assert second > first
    client.fine_tuning.jobs.resume(interrupted)
    done = wait_for_status(client, interrupted, {"succeeded"})

    assert _losses(client, interrupted) == _losses(client, straight)  # string-exact, every step once
    a, b = _weights(server, straight), _weights(server, interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert done.trained_tokens == client.fine_tuning.jobs.retrieve(straight).trained_tokens

    messages = [e.message for e in all_events(client, interrupted)]
    assert sum(m.startswith("Job paused at step") for m in messages) == 2
    assert sum(m.startswith("Fine-tuning resumed from the checkpoint at step") for m in messages) == 2
    steps = [e.data["step"] for e in all_events(client, interrupted) if e.type == "metrics"]
    assert steps == list(range(1, 241))


@pytest.mark.e2e
def test_cancel_stops_the_trainer_within_seconds(client: OpenAI, server: RunningServer) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune")
    job_id = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}},
    ).id
    wait_for(lambda: _trainer_pids(job_id), what="the trainer process")
    wait_for_status(client, job_id, {"running"})
    started = time.monotonic()
    cancelled = client.fine_tuning.jobs.cancel(job_id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    wait_for(lambda: not _trainer_pids(job_id), timeout=10, what="the trainer to exit")
    assert time.monotonic() - started < 10
    time.sleep(0.5)
    final = client.fine_tuning.jobs.retrieve(job_id)
    assert final.status == "cancelled" and final.fine_tuned_model is None
    with pytest.raises(Exception) as excinfo:
        client.fine_tuning.jobs.resume(job_id)
    assert getattr(excinfo.value, "status_code", None) == 409


def _trainer_pids(job_id: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if " train " in cmdline and job_id in cmdline and int(entry.name) != os.getpid():
            pids.append(int(entry.name))
    return pids
