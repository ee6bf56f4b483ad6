"""Organizations and API keys against a real server, through the official SDK.

Keys are made with the `openft keys` command on the server's data folder while the server runs (so a new
key must work at once). Organization B must get a 404 for everything of organization A — file, content,
job, events, checkpoints, actions, models, chat and completions (also on Azure deployment routes) — an
admin key sees both, a revoked key is a 401 on its next request, and a rate-limited key gets a 429 with
`Retry-After`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from openai import AzureOpenAI, OpenAI
from sqlalchemy import create_engine, select

from openft.db.tables import FileRow
from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import AZURE_API_VERSION
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import wait_for_status

MESSAGES = [{"role": "user", "content": "How fast does the Zorblax kettle boil?"}]


def keys_cli(server: RunningServer, *args: str) -> Any:
    """`openft keys … --json --data-dir DATA` in its own process, as an operator would run it."""
    command = [sys.executable, "-m", "openft", "keys", *args, "--json", "--data-dir", str(server.data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sdk(server: RunningServer, key: str) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)


def azure(server: RunningServer, key: str) -> AzureOpenAI:
    return AzureOpenAI(azure_endpoint=server.url, api_key=key, api_version=AZURE_API_VERSION, max_retries=0)


@pytest.fixture(scope="module")
def tenants(server: RunningServer) -> dict[str, Any]:
    """Keys for team-a, team-b and an admin, made while the server runs; one succeeded tiny job of team-a."""
    keys = {
        "a": keys_cli(server, "create", "--org", "team-a", "--project", "search"),
        "b": keys_cli(server, "create", "--org", "team-b"),
        "admin": keys_cli(server, "create", "--org", "ops", "--admin"),
    }
    a = sdk(server, keys["a"]["key"])  # the very first request of a key made after the server started
    training = a.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        suffix="tenancy",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 20}},
        },
    )
    done = wait_for_status(a, job.id, {"succeeded"})
    checkpoints = [c.fine_tuned_model_checkpoint for c in a.fine_tuning.jobs.checkpoints.list(job.id)]
    assert checkpoints
    b = sdk(server, keys["b"]["key"])
    b_file = b.files.create(file=("b.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    return {
        "keys": keys,
        "file": training.id,
        "job": done,
        "model": done.fine_tuned_model,
        "checkpoint": checkpoints[0],
        "b_file": b_file.id,
    }


def _404(call: Callable[[], Any]) -> openai.NotFoundError:
    with pytest.raises(openai.NotFoundError) as excinfo:
        call()
    assert excinfo.value.status_code == 404
    return excinfo.value


@pytest.mark.e2e
def test_names_and_ids_of_an_organization(server: RunningServer, tenants: dict[str, Any]) -> None:
    job = tenants["job"]
    assert job.organization_id == tenants["keys"]["a"]["org_id"]
    assert tenants["model"].startswith(f"ft:{TINY_MODEL_NAME}:team-a:tenancy:")
    # the result file the worker wrote belongs to the job's organization and records its project
    [result_id] = job.result_files
    assert sdk(server, tenants["keys"]["a"]["key"]).files.retrieve(result_id).purpose == "fine-tune-results"
    _404(lambda: sdk(server, tenants["keys"]["b"]["key"]).files.retrieve(result_id))
    engine = create_engine(f"sqlite:///{server.data_dir / 'openft.db'}")
    with engine.connect() as connection:
        row = connection.execute(select(FileRow.organization_id, FileRow.project).where(FileRow.id == result_id))
        assert tuple(row.one()) == (job.organization_id, "search")
    engine.dispose()


@pytest.mark.e2e
def test_another_organization_gets_404_for_everything(server: RunningServer, tenants: dict[str, Any]) -> None:
    b = sdk(server, tenants["keys"]["b"]["key"])
    file_id, job_id = tenants["file"], tenants["job"].id
    _404(lambda: b.files.retrieve(file_id))
    _404(lambda: b.files.content(file_id))
    _404(lambda: b.files.delete(file_id))
    _404(lambda: b.fine_tuning.jobs.retrieve(job_id))
    _404(lambda: b.fine_tuning.jobs.list_events(job_id))
    _404(lambda: b.fine_tuning.jobs.checkpoints.list(job_id))
    _404(lambda: b.fine_tuning.jobs.cancel(job_id))
    _404(lambda: b.fine_tuning.jobs.pause(job_id))
    _404(lambda: b.fine_tuning.jobs.resume(job_id))
    assert [f.id for f in b.files.list()] == [tenants["b_file"]]
    assert list(b.fine_tuning.jobs.list()) == []
    with pytest.raises(openai.BadRequestError) as excinfo:  # a page cursor naming A's object
        b.files.list(after=file_id)
    assert excinfo.value.param == "after"
    with pytest.raises(openai.BadRequestError) as excinfo:  # nor can B train on A's file…
        b.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=file_id)
    assert excinfo.value.param == "training_file"
    with pytest.raises(openai.BadRequestError) as excinfo:  # …or continue from A's model
        b.fine_tuning.jobs.create(model=tenants["model"], training_file=tenants["b_file"])
    assert excinfo.value.code == "model_not_found"

    on_azure = azure(server, tenants["keys"]["b"]["key"])  # /openai/deployments/{model}/…
    listed = {m.id for m in b.models.list()}
    assert TINY_MODEL_NAME in listed and {tenants["model"], tenants["checkpoint"]}.isdisjoint(listed)
    for name in (tenants["model"], tenants["checkpoint"]):
        _404(lambda name=name: b.models.retrieve(name))
        _404(lambda name=name: b.models.delete(name))
        error = _404(lambda name=name: b.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2))
        assert error.code == "model_not_found"
        _404(lambda name=name: b.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2, stream=True))
        _404(lambda name=name: b.completions.create(model=name, prompt="Hi", max_tokens=2))
        _404(lambda name=name: on_azure.chat.completions.create(model=name, messages=MESSAGES, max_tokens=2))
        _404(lambda name=name: on_azure.completions.create(model=name, prompt="Hi", max_tokens=2))
        _404(lambda name=name: on_azure.models.retrieve(name))

    # A still has everything (B's attempts changed nothing)
    a = sdk(server, tenants["keys"]["a"]["key"])
    assert a.files.retrieve(file_id).id == file_id
    assert a.models.retrieve(tenants["model"]).owned_by == tenants["keys"]["a"]["org_id"]
    reply = a.chat.completions.create(model=tenants["model"], messages=MESSAGES, max_tokens=2, temperature=0)
    assert reply.model == tenants["model"]
    assert tenants["b_file"] not in {f.id for f in a.files.list()}
    _404(lambda: a.files.retrieve(tenants["b_file"]))


@pytest.mark.e2e
@pytest.mark.parametrize("who", ["admin", "server"])
def test_admin_keys_see_every_organization(server: RunningServer, tenants: dict[str, Any], who: str) -> None:
    key = server.api_key if who == "server" else tenants["keys"]["admin"]["key"]
    admin = sdk(server, key)
    assert {tenants["file"], tenants["b_file"]} <= {f.id for f in admin.files.list()}
    assert admin.files.retrieve(tenants["b_file"]).id == tenants["b_file"]
    assert admin.files.content(tenants["file"]).content == jsonl_bytes(valid_examples(12))
    assert tenants["job"].id in {j.id for j in admin.fine_tuning.jobs.list()}
    assert admin.fine_tuning.jobs.retrieve(tenants["job"].id).organization_id == tenants["keys"]["a"]["org_id"]
    assert list(admin.fine_tuning.jobs.list_events(tenants["job"].id))
    assert {tenants["model"], tenants["checkpoint"]} <= {m.id for m in admin.models.list()}
    assert admin.models.retrieve(tenants["checkpoint"]).id == tenants["checkpoint"]
    reply = azure(server, key).chat.completions.create(model=tenants["model"], messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content is not None


@pytest.mark.e2e
def test_new_and_revoked_keys_count_at_once(server: RunningServer) -> None:
    created = keys_cli(server, "create", "--org", "team-c")
    client = sdk(server, created["key"])
    assert list(client.files.list()) == []  # works on its first request
    listed = {k["id"]: k for k in keys_cli(server, "list")}
    assert listed[created["key_id"]]["revoked_at"] is None
    assert created["key"] not in json.dumps(listed)
    keys_cli(server, "revoke", created["key_id"])
    with pytest.raises(openai.AuthenticationError) as excinfo:  # the server holds no stale copy
        client.files.list()
    assert excinfo.value.status_code == 401 and excinfo.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        azure(server, created["key"]).models.list()


@pytest.mark.e2e
def test_rate_limited_key_gets_429_with_retry_after(server: RunningServer) -> None:
    created = keys_cli(server, "create", "--org", "team-d", "--rate-limit", "3")
    client = sdk(server, created["key"])
    for _ in range(3):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as excinfo:
        client.models.list()
    error = excinfo.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert 1 <= int(error.response.headers["retry-after"]) <= 20
    raw = httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {created['key']}"})
    assert raw.status_code == 429 and raw.json()["error"]["code"] == "rate_limit_exceeded"
    assert sdk(server, server.api_key).models.list()  # other keys are not limited
