"""A job with `compute: {"workers": 2}` through the real server and worker: the worker still sees one trainer.

Paused through the API (SIGUSR1 to the launcher, passed on to both ranks), resumed, and finished with every step
recorded once; cancelled, it leaves no rank behind (the worker kills the launcher's process group). Bit-identical
resume of several ranks is `tests/training/test_distributed.py`'s.
"""

from __future__ import annotations

import csv
import io

import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.processes import training_processes
from tests.support.waiting import all_events, wait_for, wait_for_status

COMPUTE = {"workers": 2, "gpus_per_worker": 0}


def _create(client: OpenAI, training_id: str, **hyperparameters: object) -> str:
    method = {"type": "supervised", "supervised": {"hyperparameters": {**hyperparameters, "compute": COMPUTE}}}
    return client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_id, method=method).id  # type: ignore[arg-type]


@pytest.mark.e2e
def test_a_two_worker_job_pauses_resumes_and_succeeds(client: OpenAI) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune")
    job_id = _create(client, training.id, n_epochs=3, batch_size=2)  # 36 steps
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=5)),
        timeout=180,
        what="the first step",
    )
    assert len(training_processes(job_id)) == 3  # the launcher and two ranks
    client.fine_tuning.jobs.pause(job_id)
    paused = wait_for_status(client, job_id, {"paused"})
    assert paused.trained_tokens
    assert not training_processes(job_id)
    checkpoint = next(iter(client.fine_tuning.jobs.checkpoints.list(job_id)))
    assert 0 < checkpoint.step_number < 36
    client.fine_tuning.jobs.resume(job_id)
    done = wait_for_status(client, job_id, {"succeeded"}, timeout=300)

    rows = list(csv.DictReader(io.StringIO(client.files.content(done.result_files[0]).text)))
    assert [int(row["step"]) for row in rows] == list(range(1, 37))
    events = all_events(client, job_id)
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, 37))
    messages = [e.message for e in events]
    assert sum(m.startswith("Training with 2 worker processes") for m in messages) == 2  # two runs
    assert sum(m.startswith("Job paused at step") for m in messages) == 1
    reply = client.chat.completions.create(
        model=done.fine_tuned_model or "", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
    )
    assert reply.choices[0].message.content is not None


@pytest.mark.e2e
def test_cancelling_a_two_worker_job_leaves_no_process(client: OpenAI) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune")
    job_id = _create(client, training.id, n_epochs=50, batch_size=1)
    wait_for(
        lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=5)),
        timeout=180,
        what="the ranks training",
    )
    assert len(training_processes(job_id)) == 3
    client.fine_tuning.jobs.cancel(job_id)
    wait_for(lambda: not training_processes(job_id), timeout=10, what="every process of the job to exit")
