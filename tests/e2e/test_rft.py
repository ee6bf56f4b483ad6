"""Reinforcement fine-tuning through the official SDK on a real server: a job with a python grader learns (its
reward rises), reports RFT metrics, events and a result file, and serves its model; a second job paused and
resumed mid-run ends with the same per-step rows and bit-identical weights; a fine-tuned model judges a third
(label_model); graders that cannot run, or name a judge the caller cannot use, are a 400.

The base model is the tiny model with peaked next-token probabilities (tests/training/test_rft.py says why)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file

from tests.support.data import jsonl_bytes
from tests.support.server import RunningServer, start_server
from tests.support.tiny_model import build_tiny_model
from tests.support.waiting import all_events, wait_for, wait_for_status

MODEL = "tiny-peaked"
GRADER = {
    "type": "python",
    "name": "space first",
    "source": "def grade(sample, item):\n    return 1.0 if sample['output_text'].startswith(' ') else 0.0\n",
}
HYPERPARAMETERS = {
    "n_epochs": 5,
    "batch_size": 4,
    "learning_rate_multiplier": 50,  # × LoRA's base 2e-4: the tiny model learns in a few steps
    "eval_interval": 5,
    "eval_samples": 4,
    "max_completion_tokens": 8,
}  # 12 prompts: 3 steps per epoch, 15 steps


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    models = tmp_path_factory.mktemp("models")
    build_tiny_model(models / MODEL, initializer_range=0.2)
    embeddings = {"OPENFT_EMBEDDING_MODEL": str(models / MODEL)}  # text_similarity's cosine, for the judged job
    running = start_server(tmp_path_factory.mktemp("server-data"), models, extra_env=embeddings)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


def _prompts(n: int) -> bytes:
    return jsonl_bytes([{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(n)])


def _create(client: OpenAI, training: str, validation: str, grader: dict[str, Any] | None = None) -> Any:
    return client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training,
        validation_file=validation,
        seed=7,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": grader or GRADER, "hyperparameters": HYPERPARAMETERS},
        },
    )


def _rows(client: OpenAI, job_id: str) -> list[dict[str, str]]:
    job = client.fine_tuning.jobs.retrieve(job_id)
    return list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))


def _weights(server: RunningServer, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(server.data_dir / "jobs" / job_id / "model" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def data(client: OpenAI) -> tuple[str, str]:
    training = client.files.create(file=("t.jsonl", _prompts(12)), purpose="fine-tune").id
    return training, client.files.create(file=("v.jsonl", _prompts(4)), purpose="fine-tune").id


@pytest.fixture(scope="module")
def learned(client: OpenAI, data: tuple[str, str]) -> Any:
    """The straight job: it learns; its model is the judge of a later test."""
    job = _create(client, *data)
    assert job.method.type == "reinforcement"
    assert job.method.reinforcement is not None and job.method.reinforcement.grader.type == "python"
    return wait_for_status(client, job.id, {"succeeded"})


@pytest.mark.e2e
def test_a_reinforcement_job_learns_and_resumes_bit_identical(
    client: OpenAI, server: RunningServer, data: tuple[str, str], learned: Any
) -> None:
    training, validation = data
    straight = done = learned
    hyper = done.method.reinforcement.hyperparameters.model_dump()
    assert hyper["compute_multiplier"] == 1.0 and hyper["eval_interval"] == 5 and hyper["n_epochs"] == 5

    rows = _rows(client, straight.id)
    assert len(rows) == 15 and "train_reward_mean" in rows[0] and "train_mean_token_accuracy" not in rows[0]
    rewards = [float(r["train_reward_mean"]) for r in rows]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.3, rewards
    assert [int(r["step"]) for r in rows if r["valid_reward_mean"]] == [5, 10, 15]
    metrics = [e for e in all_events(client, straight.id) if e.type == "metrics"]
    assert len(metrics) == 15 and "mean reward=" in metrics[-1].message
    assert metrics[-1].data["train_reward_mean"] == float(rows[-1]["train_reward_mean"])
    assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(straight.id)]
    reply = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}])
    assert reply.choices[0].message is not None

    interrupted = _create(client, training, validation).id
    wait_for(
        lambda: any(
            e.type == "metrics" and e.data["step"] >= 2 for e in client.fine_tuning.jobs.list_events(interrupted)
        ),
        what="step 2",
    )
    assert client.fine_tuning.jobs.pause(interrupted).status == "pausing"
    wait_for_status(client, interrupted, {"paused"})
    paused_at = next(iter(client.fine_tuning.jobs.checkpoints.list(interrupted))).step_number
    assert 2 <= paused_at < 15, "the pause must land mid-run for this test to mean anything"
    client.fine_tuning.jobs.resume(interrupted)
    wait_for_status(client, interrupted, {"succeeded"})
    assert _rows(client, interrupted) == rows  # every column, string-exact: sampling, rewards, KL, losses
    a, b = _weights(server, straight.id), _weights(server, interrupted)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.e2e
def test_a_fine_tuned_model_judges_a_reinforcement_job(
    client: OpenAI, server: RunningServer, data: tuple[str, str], learned: Any
) -> None:
    """A label_model grader whose judge is a fine-tuned model (the job above's LoRA adapter), with a cosine
    text_similarity on the server's embeddings model: the job keeps its own copy of the judge and the trainer
    runs both; the judge answers one token, labels are the vocabulary."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.data_dir / "jobs" / learned.id / "model")
    labels = sorted({tokenizer.decode([i]).strip() for i in range(len(tokenizer))} - {""})
    judge = {
        "type": "label_model",
        "name": "judge",
        "model": learned.fine_tuned_model,
        "input": [{"role": "user", "content": "Is this right? {{ sample.output_text }}"}],
        "labels": labels,
        "passing_labels": labels[::2],
        "sampling_params": {"max_completions_tokens": 1, "temperature": 0},
    }
    similar = {
        "type": "text_similarity",
        "name": "similar",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.answer }}",
        "evaluation_metric": "cosine",
    }
    grader = {
        "type": "multi",
        "name": "judged and similar",
        "graders": {"judge": judge, "similar": similar},
        "calculate_output": "0.5 * judge + 0.5 * similar",
    }
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=data[0],
        seed=7,
        method={
            "type": "reinforcement",
            "reinforcement": {"grader": grader, "hyperparameters": {**HYPERPARAMETERS, "n_epochs": 1}},
        },
    )
    wait_for_status(client, job.id, {"succeeded"})
    rows = _rows(client, job.id)
    assert len(rows) == 3 and all(float(r["train_grader_error_rate"]) < 1 for r in rows), rows
    copy = server.data_dir / "jobs" / job.id / "judges" / "0"
    assert (copy / "adapter_config.json").is_file()
    assert (copy / "adapter_model.safetensors").stat().st_ino == (
        server.data_dir / "jobs" / learned.id / "model" / "adapter_model.safetensors"
    ).stat().st_ino  # hard-linked, not copied


def test_graders_that_cannot_run_are_refused_at_create(client: OpenAI) -> None:
    training = client.files.create(file=("t.jsonl", _prompts(12)), purpose="fine-tune").id
    refusals = {
        "method.reinforcement.grader.source": {"type": "python", "name": "p", "source": "def nope(:"},
        "method.reinforcement.grader.operation": {
            "type": "string_check",
            "name": "s",
            "input": "{{ sample.output_text }}",
            "reference": "x",
            "operation": "regex",
        },
        "method.reinforcement.grader.model": {
            "type": "score_model",
            "name": "judge",
            "model": "no-such-judge",
            "input": [{"role": "user", "content": "Score {{ sample.output_text }}"}],
        },
        "method.reinforcement.grader.graders.j.sampling_params.temperature": {
            "type": "multi",
            "name": "m",
            "graders": {
                "j": {
                    "type": "score_model",
                    "name": "j",
                    "model": MODEL,
                    "input": [{"role": "user", "content": "Score {{ sample.output_text }}"}],
                    "sampling_params": {"temperature": 7},
                }
            },
            "calculate_output": "j",
        },
    }
    for param, grader in refusals.items():
        with pytest.raises(openai.BadRequestError) as bad:
            _create(client, training, training, grader)
        assert bad.value.body["param"] == param, bad.value.body  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model=MODEL, training_file=training, method={"type": "reinforcement"})
    assert bad.value.body["param"] == "method"  # type: ignore[index]


def test_chat_data_in_a_reinforcement_job_fails_with_the_line(client: OpenAI, tmp_path: Path) -> None:
    lines = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 12
    training = client.files.create(file=("t.jsonl", jsonl_bytes(lines)), purpose="fine-tune").id
    job = _create(client, training, training)
    failed = wait_for_status(client, job.id, {"failed"})
    assert failed.error is not None and "line 1" in failed.error.message and "assistant" in failed.error.message
