"""Model names a migrating team uses, end to end with the official SDK on a real server: aliases set with
`openft aliases` answer on chat (OpenAI and Azure deployment paths), `/models` and new jobs, for their
organization only; a checkpoint's `ftckpt-…` id is a model name; a checkpoint shared with another
organization's project (`client.fine_tuning.checkpoints.permissions`) serves that project until revoked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AzureOpenAI, OpenAI
from typer.testing import CliRunner

from openft.cli import app
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.node_sdk import run_node_checks
from tests.support.openapi_schemas import validate
from tests.support.server import RunningServer
from tests.support.waiting import wait_for_status

MESSAGES: Any = [{"role": "user", "content": "How fast does the Zorblax kettle boil?"}]


def _cli(server: RunningServer, models_dir: Path, *args: str) -> Any:
    result = CliRunner().invoke(
        app, [*args, "--json", "--data-dir", str(server.data_dir)], env={"OPENFT_MODELS_DIR": str(models_dir)}
    )
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def tuned(server: RunningServer) -> dict[str, str]:
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key)
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    done = wait_for_status(client, job.id, {"succeeded"})
    checkpoint = next(iter(client.fine_tuning.jobs.checkpoints.list(job.id)))
    assert done.fine_tuned_model is not None
    return {
        "job": job.id,
        "file": training.id,
        "model": done.fine_tuned_model,
        "checkpoint": checkpoint.fine_tuned_model_checkpoint,
        "checkpoint_id": checkpoint.id,
    }


def _key(server: RunningServer, models_dir: Path, org: str, project: str | None = None) -> str:
    args = ["keys", "create", "--org", org] + (["--project", project] if project else [])
    return str(_cli(server, models_dir, *args)["key"])


def _chat(client: OpenAI, model: str) -> str:
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, temperature=0)
    return answer.choices[0].message.content or ""


def test_aliases_answer_wherever_a_model_name_is_accepted(
    server: RunningServer, models_dir: Path, tuned: dict[str, str]
) -> None:
    client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    old_base, old_ft = "gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini-2024-07-18:acme:support:abc123"
    _cli(server, models_dir, "aliases", "set", old_base, TINY_MODEL_NAME)
    made = _cli(server, models_dir, "aliases", "set", old_ft, tuned["model"])
    assert (made["name"], made["target"], made["org"]) == (old_ft, tuned["model"], "openft")
    _cli(server, models_dir, "aliases", "set", "support-prod", tuned["checkpoint_id"])

    # chat through an alias answers exactly as the model it names
    assert _chat(client, old_ft) == _chat(client, tuned["model"])
    assert _chat(client, old_base) == _chat(client, TINY_MODEL_NAME)
    assert _chat(client, tuned["checkpoint_id"]) == _chat(client, tuned["checkpoint"])
    completion = client.completions.create(model=old_base, prompt="Zorblax", max_tokens=3, temperature=0)
    assert (
        completion.choices[0].text
        == client.completions.create(model=TINY_MODEL_NAME, prompt="Zorblax", max_tokens=3, temperature=0)
        .choices[0]
        .text
    )
    # the Azure SDK routes by deployment: an alias is a deployment name
    azure = AzureOpenAI(azure_endpoint=server.url, api_key=server.api_key, api_version="2025-04-01-preview")
    assert azure.chat.completions.create(model="support-prod", messages=MESSAGES, max_tokens=4, temperature=0).choices[
        0
    ].message.content == _chat(client, tuned["checkpoint"])

    # /models lists the aliases with their targets and retrieves them
    listed = client.models.list()
    validate(listed.model_dump(), "ListModelsResponse")
    by_id = {m.id: m.model_dump() for m in listed.data}
    assert by_id[old_ft]["alias_for"] == tuned["model"]
    assert by_id["support-prod"]["alias_for"] == tuned["checkpoint_id"]
    assert client.models.retrieve(old_base).model_dump()["alias_for"] == TINY_MODEL_NAME

    # a new job may start from an alias (here: continued fine-tuning from the aliased fine-tune)
    job = client.fine_tuning.jobs.create(model=old_ft, training_file=tuned["file"])
    assert job.model == old_ft
    client.fine_tuning.jobs.cancel(job.id)

    # another organization's key does not see them
    other = OpenAI(base_url=f"{server.url}/v1", api_key=_key(server, models_dir, "elsewhere"), max_retries=0)
    for name in (old_ft, old_base, tuned["checkpoint_id"]):
        with pytest.raises(openai.NotFoundError):
            _chat(other, name)
    assert old_ft not in {m.id for m in other.models.list().data}

    listing = _cli(server, models_dir, "aliases", "list", "--org", "openft")
    assert {a["name"] for a in listing} == {old_base, old_ft, "support-prod"}
    _cli(server, models_dir, "aliases", "delete", old_base)
    with pytest.raises(openai.NotFoundError):
        _chat(client, old_base)


def test_a_checkpoint_shared_with_a_project_serves_it_until_revoked(
    server: RunningServer, models_dir: Path, tuned: dict[str, str]
) -> None:
    owner = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    research = OpenAI(
        base_url=f"{server.url}/v1", api_key=_key(server, models_dir, "partner", "research"), max_retries=0
    )
    sales = OpenAI(base_url=f"{server.url}/v1", api_key=_key(server, models_dir, "partner", "sales"), max_retries=0)
    checkpoint = tuned["checkpoint"]
    with pytest.raises(openai.NotFoundError):
        _chat(research, checkpoint)

    granted = owner.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=["partner/research"])
    validate(granted.model_dump(), "ListFineTuningCheckpointPermissionResponse")
    permission = granted.data[0]
    assert (permission.object, permission.project_id) == ("checkpoint.permission", "partner/research")
    assert _chat(research, checkpoint) == _chat(owner, checkpoint)
    with pytest.raises(openai.NotFoundError):
        _chat(sales, checkpoint)
    # the project may fine-tune from it; it may not manage its permissions
    partner_file = research.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = research.fine_tuning.jobs.create(model=checkpoint, training_file=partner_file.id)
    research.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        research.fine_tuning.checkpoints.permissions.list(checkpoint)

    # the Azure dialect reaches the same permissions; raw pages match OpenAI's schema
    raw = httpx.get(
        f"{server.url}/openai/v1/fine_tuning/checkpoints/{checkpoint}/permissions",
        params={"project_id": "partner/research"},
        headers={"api-key": server.api_key},
    )
    assert raw.status_code == 200, raw.text
    validate(raw.json(), "ListFineTuningCheckpointPermissionResponse")
    assert [p["id"] for p in raw.json()["data"]] == [permission.id]
    bad = httpx.post(
        f"{server.url}/v1/fine_tuning/checkpoints/{checkpoint}/permissions",
        json={"project_ids": ["no-organization-part"]},
        headers={"Authorization": f"Bearer {server.api_key}"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"].startswith("project_ids")

    deleted = owner.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=checkpoint)
    validate(deleted.model_dump(), "DeleteFineTuningCheckpointPermissionResponse")
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        _chat(research, checkpoint)


def test_the_node_sdk_shares_a_checkpoint(server: RunningServer, models_dir: Path, tuned: dict[str, str]) -> None:
    """Node's client pages and deletes permissions with its own code (`for await`, `{fine_tuned_model_checkpoint}`)."""
    project_key = _key(server, models_dir, "node-partner", "app")
    checks = [
        {
            "name": "permissions",
            "checkpoint": tuned["checkpoint"],
            "projectId": "node-partner/app",
            "projectKey": project_key,
        }
    ]
    result = run_node_checks(f"{server.url}/v1", server.api_key, checks)["permissions"]
    assert [p["project_id"] for p in result["granted"]] == ["node-partner/app"]
    assert result["whileGranted"] == 200 and result["afterRevoke"] == 404
    assert result["listed"] == [result["granted"][0]["id"]]
    assert result["deleted"] == {"id": result["granted"][0]["id"], "object": "checkpoint.permission", "deleted": True}
