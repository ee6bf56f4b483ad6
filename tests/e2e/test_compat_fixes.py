"""Requests real clients send today that openft refused or misread (issue 16, compatibility fixes): Azure's
deployment calls without `model`, token-id prompts, the deprecated `functions` API, Foundry's project path,
litellm's integer `trainingType`, Azure's DPO extras, `metadata=null`, POST on events and checkpoints, and
list pages whose ids the schema types as strings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import AZURE_API_VERSION, make_client
from tests.support.data import jsonl_bytes, preference_examples, valid_examples
from tests.support.server import RunningServer

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "How fast does the Zorblax kettle boil?"}]
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _headers(server: RunningServer) -> dict[str, str]:
    return {"api-key": server.api_key}


def _dated(server: RunningServer, path: str) -> str:
    return f"{server.url}/openai{path}?api-version={AZURE_API_VERSION}"


@pytest.fixture(scope="module")
def training_file(server: RunningServer) -> str:
    client = make_client(server, "openai")
    return client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune").id


@pytest.fixture
def cancel_later(server: RunningServer) -> Iterator[list[str]]:
    """Jobs a test creates only to read back: cancelled at once so they do not train."""
    created: list[str] = []
    yield created
    client = make_client(server, "openai")
    for job_id in created:
        with contextlib.suppress(openai.ConflictError):  # already finished (failed validation)
            client.fine_tuning.jobs.cancel(job_id)


# Inference --------------------------------------------------------------------------------------


def test_azure_deployment_calls_take_the_model_from_the_path(server: RunningServer) -> None:
    """Azure's documented REST call names the deployment in the path and sends no `model`."""
    chat = httpx.post(
        _dated(server, f"/deployments/{TINY_MODEL_NAME}/chat/completions"),
        json={"messages": MESSAGES, "max_tokens": 3, "temperature": 0},
        headers=_headers(server),
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["model"] == TINY_MODEL_NAME
    completion = httpx.post(
        _dated(server, f"/deployments/{TINY_MODEL_NAME}/completions"),
        json={"prompt": "The kettle", "max_tokens": 3},
        headers=_headers(server),
        timeout=60,
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["model"] == TINY_MODEL_NAME
    # the plain route still needs a model
    plain = httpx.post(
        _dated(server, "/chat/completions"), json={"messages": MESSAGES}, headers=_headers(server), timeout=60
    )
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "model"


def test_prompt_as_token_ids(server: RunningServer, models_dir: Path) -> None:
    client = make_client(server, "openai")
    tokenizer = AutoTokenizer.from_pretrained(models_dir / TINY_MODEL_NAME)
    ids = list(tokenizer("The kettle")["input_ids"])
    as_text = client.completions.create(model=TINY_MODEL_NAME, prompt="The kettle", max_tokens=5, temperature=0)
    as_ids = client.completions.create(model=TINY_MODEL_NAME, prompt=ids, max_tokens=5, temperature=0)
    assert as_ids.choices[0].text == as_text.choices[0].text
    assert as_ids.usage is not None and as_text.usage is not None
    assert as_ids.usage.prompt_tokens == as_text.usage.prompt_tokens == len(ids)
    several = client.completions.create(model=TINY_MODEL_NAME, prompt=[ids, ids[:1]], max_tokens=2, temperature=0)
    assert [c.index for c in several.choices] == [0, 1]
    streamed = client.completions.create(model=TINY_MODEL_NAME, prompt=ids, max_tokens=5, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == as_text.choices[0].text
    for bad in ([len(tokenizer) + 5], [1, -1], []):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(model=TINY_MODEL_NAME, prompt=bad, max_tokens=2)
        assert refused.value.param == "prompt", (bad, refused.value.message)


def test_deprecated_functions_are_read_as_tools(server: RunningServer) -> None:
    """`functions` + a named `function_call` force a call to that function on the tiny (random) model: either the
    call is complete (the old shape: `message.function_call`) or it was cut at `max_tokens` inside its JSON."""
    client = make_client(server, "openai")
    reply = client.chat.completions.create(
        model=TINY_MODEL_NAME,
        messages=MESSAGES,  # type: ignore[arg-type]
        functions=[WEATHER],  # type: ignore[list-item]
        function_call={"name": "get_weather"},
        max_tokens=30,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.message.tool_calls is None
    if choice.finish_reason == "function_call":
        assert choice.message.function_call is not None and choice.message.function_call.name == "get_weather"
    else:
        assert choice.finish_reason == "length"
        assert (choice.message.content or "").startswith('{"name": "get_weather", "arguments": {')
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=TINY_MODEL_NAME,
            messages=MESSAGES,  # type: ignore[arg-type]
            functions=[WEATHER],  # type: ignore[list-item]
            function_call={"name": "nope"},
        )
    assert refused.value.param == "function_call"


def test_foundry_project_path_is_the_azure_v1_api(server: RunningServer) -> None:
    base = f"{server.url}/api/projects/my-project/openai/v1"
    client = OpenAI(base_url=base, api_key=server.api_key, max_retries=0)
    assert TINY_MODEL_NAME in {m.id for m in client.models.list()}
    reply = client.chat.completions.create(model=TINY_MODEL_NAME, messages=MESSAGES, max_tokens=2)  # type: ignore[arg-type]
    assert reply.model == TINY_MODEL_NAME
    assert httpx.get(f"{base}/models").status_code == 401  # the same key check as every other path
    wrong_version = httpx.get(f"{base}/models?api-version=2024-10-21", headers=_headers(server))
    assert wrong_version.status_code == 400 and wrong_version.json()["error"]["param"] == "api-version"
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "/api/projects/{project}/openai/v1/chat/completions" in paths


# Fine-tuning ------------------------------------------------------------------------------------


def _create(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(_dated(server, "/fine_tuning/jobs"), json=body, headers=_headers(server), timeout=60)


def test_training_type_as_an_integer(server: RunningServer, training_file: str, cancel_later: list[str]) -> None:
    for value in (1, 0, 2, "GlobalStandard", "developer"):
        created = _create(server, {"model": TINY_MODEL_NAME, "training_file": training_file, "trainingType": value})
        assert created.status_code == 201, (value, created.text)
        cancel_later.append(created.json()["id"])
    unknown = _create(server, {"model": TINY_MODEL_NAME, "training_file": training_file, "trainingType": 9})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "trainingType"


def test_azure_dpo_extras_are_accepted_and_reported(
    server: RunningServer, cancel_later: list[str], training_file: str
) -> None:
    client = make_client(server, "azure-dated")
    preference = client.files.create(file=("p.jsonl", jsonl_bytes(preference_examples(8))), purpose="fine-tune")
    dpo = {"beta": 0.1, "l2_multiplier": 0.1, "prompt_loss_weight": 0.1, "n_epochs": 1}
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=preference.id,
        method={"type": "dpo", "dpo": {"hyperparameters": dpo}},  # type: ignore[typeddict-unknown-key]
    )
    cancel_later.append(job.id)
    warnings = [e.message for e in client.fine_tuning.jobs.list_events(job.id) if e.level == "warn"]
    assert any("l2_multiplier 0.1 is ignored" in w for w in warnings), warnings
    assert any("prompt_loss_weight 0.1 is ignored" in w for w in warnings), warnings
    assert job.method is not None and job.method.dpo is not None
    stored = job.method.dpo.hyperparameters.model_dump() if job.method.dpo.hyperparameters else {}
    assert "l2_multiplier" not in stored and stored["beta"] == 0.1
    # litellm's shape: prompt_loss_weight at the top level; 0 is what openft does anyway, so no warning
    for weight, warned in ((0.01, True), (0, False)):
        created = _create(
            server, {"model": TINY_MODEL_NAME, "training_file": training_file, "prompt_loss_weight": weight}
        )
        assert created.status_code == 201, created.text
        cancel_later.append(created.json()["id"])
        events = client.fine_tuning.jobs.list_events(created.json()["id"])
        assert any(e.level == "warn" and "prompt_loss_weight" in e.message for e in events) is warned


def test_metadata_null_lists_jobs_without_metadata(
    server: RunningServer, training_file: str, cancel_later: list[str]
) -> None:
    client = make_client(server, "openai")
    tagged = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_file, metadata={"k": "v"})
    plain = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_file)
    cancel_later.extend([tagged.id, plain.id])
    listed = httpx.get(
        f"{server.url}/v1/fine_tuning/jobs?metadata=null&limit=100", headers=_headers(server), timeout=30
    ).json()
    ids = {job["id"] for job in listed["data"]}
    assert plain.id in ids and tagged.id not in ids
    assert all(job["metadata"] in (None, {}) for job in listed["data"])


def test_post_reads_events_and_checkpoints_like_get(
    server: RunningServer, training_file: str, cancel_later: list[str]
) -> None:
    """Azure's docs print `curl -X POST …/events` and `…/checkpoints`."""
    job = make_client(server, "openai").fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_file)
    cancel_later.append(job.id)
    for what in ("events", "checkpoints"):
        url = _dated(server, f"/fine_tuning/jobs/{job.id}/{what}")
        posted = httpx.post(url, headers=_headers(server), timeout=30)
        got = httpx.get(url, headers=_headers(server), timeout=30)
        assert posted.status_code == 200, posted.text
        assert posted.json()["object"] == "list" and got.status_code == 200
        assert {item["id"] for item in posted.json()["data"]} <= {item["id"] for item in got.json()["data"]}
    assert httpx.post(_dated(server, f"/fine_tuning/jobs/{job.id}/events"), headers=_headers(server)).json()["data"]


def test_empty_file_page_names_its_ids_as_strings(server: RunningServer) -> None:
    """OpenAI's `ListFilesResponse` requires `first_id` and `last_id` as strings."""
    page = httpx.get(f"{server.url}/v1/files?purpose=assistants", headers=_headers(server), timeout=30).json()
    assert page["data"] == [] and page["first_id"] == "" and page["last_id"] == ""


def test_azure_dated_delete_of_a_finished_job(server: RunningServer, training_file: str) -> None:
    """Azure's `DELETE /openai/fine_tuning/jobs/{id}` (204): a finished job disappears with its events and its
    working folder; an unfinished one is refused; OpenAI and Azure v1 define no such call."""
    client = make_client(server, "azure-dated")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_file)
    url = _dated(server, f"/fine_tuning/jobs/{job.id}")
    early = httpx.delete(url, headers=_headers(server), timeout=30)
    assert early.status_code == 400, early.text
    assert early.json()["error"]["code"] == "invalid_job_state"
    for other in (f"{server.url}/v1/fine_tuning/jobs/{job.id}", f"{server.url}/openai/v1/fine_tuning/jobs/{job.id}"):
        assert httpx.delete(other, headers=_headers(server), timeout=30).status_code == 405
    client.fine_tuning.jobs.cancel(job.id)
    deleted = httpx.delete(url, headers=_headers(server), timeout=30)
    assert deleted.status_code == 204 and deleted.content == b""
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.list_events(job.id)
    assert job.id not in {j.id for j in client.fine_tuning.jobs.list(limit=100)}
    assert not (server.data_dir / "jobs" / job.id).exists()
    assert httpx.delete(url, headers=_headers(server), timeout=30).status_code == 404
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert "delete" in paths["/openai/fine_tuning/jobs/{fine_tuning_job_id}"]
    assert "delete" not in paths["/v1/fine_tuning/jobs/{fine_tuning_job_id}"]
