"""The whole lifecycle through the official SDK, on each URL dialect: upload → job → model → chat."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable

import httpx
import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import DIALECTS
from tests.support import openapi_schemas
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import all_events, wait_for_status

RESULT_COLUMNS = [
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
]


def _raw(server: RunningServer, path: str) -> dict:
    response = httpx.get(f"{server.url}/v1{path}", headers={"Authorization": f"Bearer {server.api_key}"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.e2e
@pytest.mark.parametrize("dialect", DIALECTS)
def test_full_lifecycle(dialect: str, client_for: Callable[[str], OpenAI], server: RunningServer) -> None:
    client = client_for(dialect)
    training = client.files.create(file=("train.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    assert training.purpose == "fine-tune" and training.bytes > 0 and training.filename == "train.jsonl"
    assert client.files.retrieve(training.id).id == training.id
    assert training.id in [f.id for f in client.files.list(purpose="fine-tune")]

    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        suffix=f"life-{dialect}",
        seed=7,
        metadata={"dialect": dialect},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["a"]}}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    assert job.status == "validating_files"
    assert job.hyperparameters.learning_rate_multiplier == "auto"
    assert job.seed == 7 and job.metadata == {"dialect": dialect} and job.estimated_finish is None
    assert job.integrations and job.integrations[0].wandb.project == "p"

    done = wait_for_status(client, job.id, {"succeeded"})
    assert re.fullmatch(rf"ft:{TINY_MODEL_NAME}:openft:life-{dialect}:[A-Za-z0-9]{{8}}", done.fine_tuned_model)
    assert done.fine_tuned_model.endswith(job.id.split("-", 1)[1][:8])
    assert done.finished_at and done.finished_at >= done.created_at
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.estimated_finish is None and done.error is None
    assert (done.hyperparameters.n_epochs, done.hyperparameters.batch_size) == (2, 4)
    assert isinstance(done.hyperparameters.learning_rate_multiplier, float)
    assert (
        done.method.supervised.hyperparameters.learning_rate_multiplier == done.hyperparameters.learning_rate_multiplier
    )
    assert done.organization_id.startswith("org-") and done.user_provided_suffix == f"life-{dialect}"
    openapi_schemas.validate(_raw(server, f"/fine_tuning/jobs/{job.id}"), "FineTuningJob")

    # result file: one row per planned step (12 examples / batch 4 × 2 epochs = 6 steps)
    (result_id,) = done.result_files
    result = client.files.retrieve(result_id)
    assert result.purpose == "fine-tune-results"
    openapi_schemas.validate(_raw(server, f"/files/{result_id}"), "OpenAIFile")
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert list(rows[0]) == RESULT_COLUMNS
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["train_loss"]) > 0 and 0 <= float(r["train_mean_token_accuracy"]) <= 1 for r in rows)

    # events: paged through the SDK's cursor, metrics per step with the documented data
    events = all_events(client, job.id)
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == [1, 2, 3, 4, 5, 6]
    assert {"step", "total_steps", "train_loss", "train_mean_token_accuracy"} <= set(metrics[0].data)
    assert metrics[0].data["total_steps"] == 6
    assert [float(r["train_loss"]) for r in rows] == [e.data["train_loss"] for e in metrics]
    messages = [e.message for e in events]
    assert messages[0] == f"Created fine-tuning job: {job.id}"
    assert f"New fine-tuned model created: {done.fine_tuned_model}" in messages
    assert messages[-1] == "The job has successfully completed"
    raw_events = _raw(server, f"/fine_tuning/jobs/{job.id}/events?limit=3")
    openapi_schemas.validate(raw_events, "ListFineTuningJobEventsResponse")

    # checkpoints at each epoch end, newest first, callable by name
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 3]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[1].metrics.train_loss == float(rows[2]["train_loss"])
    openapi_schemas.validate(
        _raw(server, f"/fine_tuning/jobs/{job.id}/checkpoints"), "ListFineTuningJobCheckpointsResponse"
    )

    # the job appears in lists, filtered by metadata
    listed = list(client.fine_tuning.jobs.list(metadata={"dialect": dialect}))
    assert [j.id for j in listed] == [job.id]
    openapi_schemas.validate(_raw(server, "/fine_tuning/jobs?limit=2"), "ListPaginatedFineTuningJobsResponse")

    # use the model: base, fine-tuned and checkpoint names all answer
    for model in (TINY_MODEL_NAME, done.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "How fast does it boil?"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].message.role == "assistant"
        assert reply.usage.completion_tokens >= 1 and reply.model == model
        assert reply.choices[0].finish_reason in ("stop", "length")

    # the training file can be deleted now; the job keeps its record
    assert client.files.delete(training.id).deleted
    assert client.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
