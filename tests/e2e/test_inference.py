"""Inference and the models API through the official SDK: base, fine-tuned and checkpoint models on all
three URL dialects, plain and streamed, every parameter and every error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import DIALECTS
from tests.support import openapi_schemas
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import wait_for_status

MESSAGES = [{"role": "user", "content": "How fast does the Zorblax kettle boil?"}]


@pytest.fixture(scope="module")
def tuned(server: RunningServer) -> dict[str, str]:
    """One fine-tuned tiny model (2 epochs → checkpoints at steps 3 and 6) for the whole module."""
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key)
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        suffix="inf",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20}},
        },
    )
    done = wait_for_status(client, job.id, {"succeeded"})
    checkpoints = {
        c.step_number: c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)
    }
    return {"job": job.id, "model": done.fine_tuned_model, "checkpoint": checkpoints[3]}


def _raw_sse(server: RunningServer, path: str, body: dict[str, Any]) -> list[Any]:
    """The `data:` payloads of a streamed response, parsed (the final `[DONE]` kept as a string)."""
    payloads: list[Any] = []
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.stream("POST", f"{server.url}/v1{path}", json=body, headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                data = line[5:].strip()
                payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


@pytest.mark.e2e
@pytest.mark.parametrize("dialect", DIALECTS)
def test_models_and_chat_on_every_dialect(
    dialect: str, client_for: Callable[[str], OpenAI], tuned: dict[str, str], server: RunningServer
) -> None:
    client = client_for(dialect)
    listed = {m.id: m for m in client.models.list()}
    assert {TINY_MODEL_NAME, tuned["model"], tuned["checkpoint"]} <= set(listed)
    assert listed[TINY_MODEL_NAME].owned_by == "system"
    assert listed[tuned["model"]].owned_by.startswith("org-")
    assert client.models.retrieve(tuned["checkpoint"]).id == tuned["checkpoint"]
    for model in (TINY_MODEL_NAME, tuned["model"], tuned["checkpoint"]):
        reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0)
        assert reply.model == model and reply.choices[0].message.content is not None
        streamed = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=6, temperature=0, stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert text == reply.choices[0].message.content
        completion = client.completions.create(model=model, prompt="The kettle", max_tokens=4, temperature=0)
        assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens >= 1
    if dialect == "azure-dated":
        raw = httpx.get(
            f"{server.url}/openai/models?api-version=2025-04-01-preview", headers={"api-key": server.api_key}
        ).json()
        fine_tune = next(m for m in raw["data"] if m["id"] == tuned["model"])
        assert fine_tune["fine_tune"] == tuned["job"] and fine_tune["capabilities"]["chat_completion"] is True


@pytest.mark.e2e
def test_responses_match_openai_schemas(server: RunningServer, tuned: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    openapi_schemas.validate(httpx.get(f"{server.url}/v1/models", headers=headers).json(), "ListModelsResponse")
    model = httpx.get(f"{server.url}/v1/models/{tuned['model']}", headers=headers).json()
    openapi_schemas.validate(model, "Model")
    # greedy: the streamed run below must produce the same tokens (sampled, one may stop a token earlier)
    body = {"model": tuned["model"], "messages": MESSAGES, "max_tokens": 5, "temperature": 0, "logprobs": True}
    body["top_logprobs"] = 2
    chat = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers=headers, timeout=60).json()
    openapi_schemas.validate(chat, "CreateChatCompletionResponse")
    chunks = _raw_sse(server, "/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert chunks[-1] == "[DONE]"
    for chunk in chunks[:-1]:
        openapi_schemas.validate(chunk, "CreateChatCompletionStreamResponse")
    assert (
        chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == chat["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None for c in chunks[:-2])
    completion = httpx.post(
        f"{server.url}/v1/completions", json={"model": TINY_MODEL_NAME, "prompt": "a", "max_tokens": 3}, headers=headers
    ).json()
    openapi_schemas.validate(completion, "CreateCompletionResponse")


@pytest.mark.e2e
def test_sampling_parameters(client: OpenAI, tuned: dict[str, str]) -> None:
    model = tuned["model"]
    ask: Callable[..., Any] = lambda **kw: client.chat.completions.create(model=model, messages=MESSAGES, **kw)  # noqa: E731
    greedy = [ask(max_tokens=8, temperature=0).choices[0].message.content for _ in range(2)]
    assert greedy[0] == greedy[1]
    seeded = [ask(max_tokens=8, temperature=1.2, seed=5).choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]
    two = ask(max_tokens=4, n=2, temperature=1.0, seed=1)
    assert [c.index for c in two.choices] == [0, 1]
    short = ask(max_completion_tokens=1, temperature=0)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 1
    full = ask(max_tokens=12, temperature=0).choices[0].message.content
    if len(full) > 3:
        stop = full[2:4]
        cut = ask(max_tokens=12, temperature=0, stop=[stop])
        assert cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
    scored = ask(max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)
    tokens = scored.choices[0].logprobs.content
    assert len(tokens) >= 1 and all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in tokens)
    penalised = ask(max_tokens=8, temperature=0, presence_penalty=2.0, frequency_penalty=2.0)
    assert penalised.choices[0].message.content is not None
    unknown = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=2, extra_body={"some_future_field": {"x": 1}}
    )
    assert unknown.choices
    with_roles = client.chat.completions.create(
        model=model,
        max_tokens=3,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "again"},
        ],
    )
    assert with_roles.usage.prompt_tokens > 5


@pytest.mark.e2e
def test_request_errors(client: OpenAI, server: RunningServer, tuned: dict[str, str]) -> None:
    model = tuned["model"]
    with pytest.raises(openai.NotFoundError) as excinfo:
        client.chat.completions.create(model="ft:nope", messages=MESSAGES)
    assert excinfo.value.code == "model_not_found" and excinfo.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope", messages=MESSAGES, stream=True)  # before streaming starts
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    bad: list[tuple[dict[str, Any], str]] = [
        ({"temperature": 3}, "temperature"),
        ({"n": 0}, "n"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"presence_penalty": 5}, "presence_penalty"),
        ({"logit_bias": {"1": 5}}, "logit_bias"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ]
    for extra, param in bad:
        body = {"model": model, "messages": MESSAGES} | extra
        with pytest.raises(openai.BadRequestError) as excinfo:
            client.chat.completions.create(**body)
        assert excinfo.value.param == param, (extra, excinfo.value.message)
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 2000}], stream=True)
    assert excinfo.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.completions.create(model=model, prompt="x", suffix="y")
    assert excinfo.value.param == "suffix"


@pytest.mark.e2e
def test_completions_parameters(client: OpenAI, tuned: dict[str, str]) -> None:
    model = tuned["model"]
    echoed = client.completions.create(model=model, prompt="The kettle", max_tokens=3, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("The kettle")
    many = client.completions.create(model=model, prompt=["a", "b"], n=2, max_tokens=2, temperature=1, seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    scored = client.completions.create(model=model, prompt="a", max_tokens=3, temperature=0, logprobs=2)
    assert len(scored.choices[0].logprobs.tokens) == len(scored.choices[0].logprobs.token_logprobs)
    assert all(len(top) == 2 for top in scored.choices[0].logprobs.top_logprobs)
    plain = client.completions.create(model=model, prompt="The kettle", max_tokens=5, temperature=0)
    streamed = client.completions.create(model=model, prompt="The kettle", max_tokens=5, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == plain.choices[0].text


@pytest.mark.e2e
def test_export_and_delete_a_fine_tuned_model(
    client: OpenAI, server: RunningServer, models_dir: Path, tmp_path: Path
) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    done = wait_for_status(client, job.id, {"succeeded"})
    name = done.fine_tuned_model

    # export: the adapter folder and the merged model both load in plain transformers and agree
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for merged in (False, True):
        out = tmp_path / ("merged" if merged else "adapter")
        command = [sys.executable, "-m", "openft", "export", name, "--out", str(out)]
        command += ["--data-dir", str(server.data_dir), "--models-dir", str(models_dir)] + (
            ["--merged"] if merged else []
        )
        subprocess.run(command, check=True, capture_output=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    ids = tokenizer("The kettle boils", return_tensors="pt").input_ids
    merged_model = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapter_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(models_dir / TINY_MODEL_NAME), tmp_path / "adapter"
    )
    with torch.no_grad():
        torch.testing.assert_close(merged_model(ids).logits, adapter_model(ids).logits, atol=1e-4, rtol=1e-4)
    assert merged_model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    again = subprocess.run([*command[:6], str(tmp_path / "merged"), *command[7:11]], capture_output=True, text=True)
    assert again.returncode == 1 and "already exists" in again.stderr

    # delete: gone from listing and inference, the job keeps its record
    checkpoint = next(iter(client.fine_tuning.jobs.checkpoints.list(job.id))).fine_tuned_model_checkpoint
    with pytest.raises(openai.BadRequestError):
        client.models.delete(checkpoint)
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete(TINY_MODEL_NAME)
    deleted = client.models.delete(name)
    assert deleted.deleted and deleted.id == name
    listed = {m.id for m in client.models.list()}
    assert name not in listed and checkpoint not in listed
    for gone in (name, checkpoint):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=gone, messages=MESSAGES, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.delete(name)
    record = client.fine_tuning.jobs.retrieve(job.id)
    assert record.status == "succeeded" and record.fine_tuned_model == name and record.result_files
    assert not (server.data_dir / "jobs" / job.id / "model").exists()
