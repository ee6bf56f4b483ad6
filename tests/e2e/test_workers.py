"""Separate workers: `openft serve --no-worker` plus `openft worker` processes on one PostgreSQL database.

The server runs no trainer; two workers share the queue (each job on exactly one); a queued job shows its
place; SIGTERM on a worker checkpoints its trainer and queues the job again, and the other worker finishes
it with no step lost: the same losses and bit-identical weights as the same job run undisturbed.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file
from sqlalchemy import create_engine

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.test_pause_resume import _trainer_pids
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.databases import postgres_available, postgres_schema_url, worker_runs
from tests.support.server import start_server
from tests.support.waiting import all_events, latest_step, wait_for, wait_for_status
from tests.support.workers import start_worker

HYPERPARAMETERS = {"n_epochs": 4, "batch_size": 1, "learning_rate_multiplier": 2.0}  # 24 × 4 = 96 steps


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at OPENFT_TEST_POSTGRES_URL")
    with postgres_schema_url() as url:
        yield url


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _losses(client: OpenAI, job_id: str) -> list[str]:
    text = client.files.content(client.fine_tuning.jobs.retrieve(job_id).result_files[0]).text
    return [row["train_loss"] for row in csv.DictReader(io.StringIO(text))]


def _weights(data_dir: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(data_dir / "jobs" / job_id / "model" / "adapter_model.safetensors")


def _one_waits_two_run(client: OpenAI, jobs: list[str]) -> tuple[Any, list[str]] | None:
    """(the queued job, the running job ids) once two jobs run and the third waits with an estimate."""
    now = [client.fine_tuning.jobs.retrieve(j) for j in jobs]
    waiting = [j for j in now if j.status == "queued" and j.estimated_start is not None]
    running = [j.id for j in now if j.status == "running"]
    if len(waiting) != 1 or len(running) != 2:
        return None
    return waiting[0], running


@pytest.mark.e2e
@pytest.mark.postgres
def test_two_workers_share_a_servers_queue_and_a_sigterm_loses_no_step(
    tmp_path: Path, models_dir: Path, postgres_url: str
) -> None:
    data_dir = tmp_path / "data"
    env = {"OPENFT_DATABASE_URL": postgres_url, "OPENFT_LEASE_SECONDS": "3", "OPENFT_TRAIN_THREADS": "1"}
    server = start_server(data_dir, models_dir, extra_env=env, extra_args=["--no-worker"])
    db = create_engine(postgres_url)  # which worker ran what: kept in the database, not sent to tenants
    workers = []
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=2)
        training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune").id
        method = {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}}
        jobs = [
            client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training, seed=5, method=method).id
            for _ in range(3)
        ]
        time.sleep(1.5)  # no worker yet: nothing moves, and the server starts no trainer
        assert {client.fine_tuning.jobs.retrieve(j).status for j in jobs} == {"validating_files"}
        assert not any(_trainer_pids(j) for j in jobs)

        workers = [start_worker(data_dir, models_dir, name, extra_env=env) for name in ("w1", "w2")]
        # which two run first is a race (a worker with a free slot claims the oldest job already validated,
        # and validations finish in any order), so the test follows whichever job ends up waiting
        third, running = wait_for(
            lambda: _one_waits_two_run(client, jobs), timeout=120, what="two running, one queued with an estimate"
        )
        assert third.queue_position == 1 and third.estimated_finish is not None
        assert third.estimated_finish > third.estimated_start >= third.created_at
        # the events follow the job through the queue and say when a start estimate becomes known; the worker
        # reports on its poll. Claim order is creation order, so the job can also move back a place when an
        # older job finishes validating after it (seen: positions 1, 2, 1)
        queue_events = wait_for(
            lambda: (
                (found := [e for e in all_events(client, third.id) if e.message.startswith("Queued:")])
                and found[-1].message.startswith("Queued: position 1; estimated start")
                and found
            ),
            timeout=30,
            interval=0.5,
            what="a queue event with position 1 and a start estimate",
        )
        positions = [e.data["queue_position"] for e in queue_events]
        assert positions[-1] == 1 and all(1 <= p <= len(jobs) for p in positions)
        assert all(e.message.startswith(f"Queued: position {e.data['queue_position']};") for e in queue_events)
        running_pids = _trainer_pids(running[0]) + _trainer_pids(running[1])
        assert running_pids and {_parent(pid) for pid in running_pids} <= {w.process.pid for w in workers}

        target = min(running, key=lambda j: latest_step(client, j))  # the furthest from its end
        # SIGTERM the worker of a running job mid-run: it checkpoints, the job is queued, the other one goes on
        assert wait_for(lambda: latest_step(client, target) >= 10, what="step 10 of the job to stop")
        owner = next(w for w in workers if w.worker_id == worker_runs(db, target)[-1])
        signalled = time.monotonic()
        assert owner.stop() == 0
        requeued = time.monotonic() - signalled
        messages = [e.message for e in all_events(client, target)]
        stopped = [m for m in messages if "(worker shutting down)" in m]
        assert stopped, messages[-5:]
        print(f"\nSIGTERM → worker exited with the job queued again: {requeued:.1f} s ({stopped[0]})")

        for job_id in jobs:
            wait_for_status(client, job_id, {"succeeded"}, timeout=240)
        undisturbed = next(j for j in jobs if j != target)
        reference = _losses(client, undisturbed)
        weights = _weights(data_dir, undisturbed)
        for job_id in jobs:
            assert _losses(client, job_id) == reference
            other = _weights(data_dir, job_id)
            assert all(torch.equal(weights[k], other[k]) for k in weights)
        stop_step = int(stopped[0].split("at step ")[1].split(" ")[0])
        resumed = [e.message for e in all_events(client, target) if e.message.startswith("Fine-tuning resumed")]
        assert resumed == [f"Fine-tuning resumed from the checkpoint at step {stop_step} of 96."]
        runs = {job_id: worker_runs(db, job_id) for job_id in jobs}
        assert {w for ids in runs.values() for w in ids} == {"w1", "w2"}
        assert runs[target][0] == owner.worker_id and runs[target][1] != owner.worker_id
        steps = [e.data["step"] for e in all_events(client, target) if e.type == "metrics"]
        assert sorted(steps) == list(range(1, 97))
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
        db.dispose()
        assert os.path.isdir(data_dir)
