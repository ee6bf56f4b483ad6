"""A job its worker's device cannot hold fails at once with `error.code: "out_of_memory"` and a message that says
what the plan needed and had (the memory planner, training/memory_plan.py), seen through the official SDK.

The server's worker gets `OPENFT_TRAIN_MEMORY_GB=0.5`: less than any job's fixed overhead, so even the tiny model
cannot fit, as a 7B model would not on a small GPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import make_client
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer, start_server
from tests.support.waiting import all_events, wait_for_status


@pytest.fixture(scope="module")
def short_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(
        tmp_path_factory.mktemp("short-memory"), models_dir, extra_env={"OPENFT_TRAIN_MEMORY_GB": "0.5"}
    )
    yield running
    running.stop()


@pytest.mark.e2e
def test_a_job_that_cannot_fit_fails_with_out_of_memory(short_server: RunningServer) -> None:
    client: OpenAI = make_client(short_server, "openai")
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training.id)
    failed = wait_for_status(client, job.id, {"failed"}, timeout=120)
    assert failed.error.code == "out_of_memory"
    assert failed.error.message.startswith("the job needs ~")
    assert "512 MiB available on this machine" in failed.error.message
    assert failed.error.param is None and failed.trained_tokens in (None, 0)
    messages = [event.message for event in all_events(client, job.id)]
    assert not any(message.startswith("Loaded base model") for message in messages)  # it failed before the load
