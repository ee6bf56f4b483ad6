"""Restarts lose nothing: a graceful stop and a kill -9 of the server both end in the same model as a straight run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.test_pause_resume import _trainer_pids
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer, start_server
from tests.support.waiting import all_events, latest_step, wait_for, wait_for_status

ENV = {"OPENFT_LEASE_SECONDS": "3"}
HYPERPARAMETERS = {"n_epochs": 10, "batch_size": 1, "learning_rate_multiplier": 2.0}


def _client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=2)


def _start_job(client: OpenAI, training_id: str) -> str:
    return client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training_id,
        seed=99,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}},
    ).id


def _wait_for_step(client: OpenAI, job_id: str, step: int) -> None:
    wait_for(lambda: latest_step(client, job_id) >= step, what=f"step {step}")


def _losses(client: OpenAI, job_id: str) -> list[str]:
    text = client.files.content(client.fine_tuning.jobs.retrieve(job_id).result_files[0]).text
    return [row["train_loss"] for row in csv.DictReader(io.StringIO(text))]


def _weights(data_dir: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(data_dir / "jobs" / job_id / "model" / "adapter_model.safetensors")


@pytest.mark.e2e
def test_graceful_stop_and_kill_9_of_the_server_lose_no_step(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_server(data_dir, models_dir, extra_env=ENV)
    client = _client(first)
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune").id
    graceful = _start_job(client, training)
    _wait_for_step(client, graceful, 3)
    first.stop()  # SIGTERM: trainers checkpoint, jobs go back to the queue

    second = start_server(data_dir, models_dir, extra_env=ENV)
    client = _client(second)
    wait_for_status(client, graceful, {"succeeded"})
    killed = _start_job(client, training)
    _wait_for_step(client, killed, 3)
    second.process.kill()  # kill -9: no shutdown code runs
    second.process.wait()
    wait_for(lambda: not _trainer_pids(killed), timeout=30, what="the orphaned trainer to stop")

    third = start_server(data_dir, models_dir, extra_env=ENV)
    try:
        client = _client(third)
        wait_for_status(client, killed, {"succeeded"}, timeout=120)
        straight = _start_job(client, training)
        wait_for_status(client, straight, {"succeeded"})
        reference = _losses(client, straight)
        for job_id in (graceful, killed):
            assert _losses(client, job_id) == reference
            a, b = _weights(data_dir, straight), _weights(data_dir, job_id)
            assert all(torch.equal(a[k], b[k]) for k in a)
        graceful_messages = [e.message for e in all_events(client, graceful)]
        assert any("worker shutting down" in m for m in graceful_messages)
        killed_events = all_events(client, killed)
        assert any(e.level == "warn" and e.message.startswith("Recovered") for e in killed_events)
        assert any(m.message.startswith("Fine-tuning resumed from the checkpoint") for m in killed_events)
    finally:
        third.stop()
