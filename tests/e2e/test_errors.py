"""Every bad input gets a clear OpenAI-shaped error through the SDK: files, requests, transitions, auth."""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.support import openapi_schemas
from tests.support.data import jsonl_bytes, malformed_cases, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import wait_for_status

CASES = malformed_cases()


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_training_file_fails_the_job_with_code_param_and_line(client: OpenAI, name: str) -> None:
    content, code, line = CASES[name]
    if not content:  # an empty upload is refused at upload time instead
        with pytest.raises(openai.BadRequestError) as excinfo:
            client.files.create(file=("empty.jsonl", content), purpose="fine-tune")
        assert excinfo.value.param == "file"
        return
    uploaded = client.files.create(file=(f"{name}.jsonl", content), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=uploaded.id)
    failed = wait_for_status(client, job.id, {"failed"}, timeout=60)
    assert failed.error.code == code
    assert failed.error.param == "training_file"
    assert failed.finished_at and failed.fine_tuned_model is None
    if line is not None:
        assert f"line {line}:" in failed.error.message
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[0].level == "error"


@pytest.mark.e2e
def test_bad_validation_file_names_validation_file(client: OpenAI) -> None:
    good = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    bad = client.files.create(
        file=("v.jsonl", b'{"messages": [{"role": "user", "content": "x"}]}\n'), purpose="fine-tune"
    )
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=good.id, validation_file=bad.id)
    failed = wait_for_status(client, job.id, {"failed"}, timeout=60)
    assert failed.error.param == "validation_file" and "line 1:" in failed.error.message


def _create_error(client: OpenAI, **overrides: object) -> openai.APIStatusError:
    body = {"model": TINY_MODEL_NAME, "training_file": overrides.pop("training_file", "file-none")} | overrides
    with pytest.raises(openai.APIStatusError) as excinfo:
        client.fine_tuning.jobs.create(**body)  # type: ignore[arg-type]
    return excinfo.value


@pytest.mark.e2e
def test_create_request_problems_are_400_with_param(client: OpenAI) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    other = client.files.create(file=("b.jsonl", b"{}\n"), purpose="batch")
    t = training.id
    cases: list[tuple[dict[str, object], str]] = [
        ({"model": "no-such-model", "training_file": t}, "model"),
        ({"model": "../../etc", "training_file": t}, "model"),
        ({}, "training_file"),
        ({"training_file": other.id}, "training_file"),
        ({"training_file": t, "validation_file": "file-missing"}, "validation_file"),
        ({"training_file": t, "suffix": "bad suffix!"}, "suffix"),
        ({"training_file": t, "suffix": "x" * 65}, "suffix"),
        ({"training_file": t, "seed": -1}, "seed"),
        ({"training_file": t, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"training_file": t, "metadata": {"k": "v" * 513}}, "metadata"),
        ({"training_file": t, "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"training_file": t, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"training_file": t, "hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size"),
        (
            {"training_file": t, "hyperparameters": {"learning_rate_multiplier": 0}},
            "hyperparameters.learning_rate_multiplier",
        ),
        (
            {
                "training_file": t,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": "many"}}},
            },
            "method.supervised.hyperparameters.n_epochs",
        ),
        ({"training_file": t, "method": {"type": "reinforcement"}}, "method"),  # its grader is missing
        (
            {"training_file": t, "method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "x"}}}},
            "method.reinforcement.grader.type",
        ),
        (
            {"training_file": t, "method": {"type": "supervised", "reinforcement": {"grader": {}}}},
            "method.reinforcement",
        ),
        ({"training_file": t, "method": {"type": "nonsense"}}, "method.type"),
        ({"training_file": t, "integrations": [{"type": "slack"}]}, "integrations.0.type"),
    ]
    for overrides, param in cases:
        error = _create_error(client, **overrides)
        assert error.status_code == 400, (overrides, error)
        assert error.param == param, (overrides, error.param, error.message)
        assert error.type == "invalid_request_error" and error.message


@pytest.mark.e2e
def test_unknown_field_and_malformed_json_are_400(server: RunningServer) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}", "Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=headers, content=b'{"model": "x",')
    assert response.status_code == 400
    openapi_schemas.validate(response.json(), "ErrorResponse")
    response = httpx.post(
        f"{server.url}/v1/fine_tuning/jobs", headers=headers, json={"model": "x", "training_file": "f", "epochs": 3}
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "epochs"
    response = httpx.post(f"{server.url}/v1/fine_tuning/jobs", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["message"]
    response = httpx.get(f"{server.url}/v1/fine_tuning/jobs?limit=100000000000", headers=headers)
    assert response.status_code == 400 and response.json()["error"]["param"] == "limit"
    response = httpx.get(f"{server.url}/v1/no/such/route", headers=headers)
    assert response.status_code == 404 and response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.e2e
def test_illegal_transitions_are_409_invalid_job_state_not_retried(client: OpenAI, server: RunningServer) -> None:
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    with pytest.raises(openai.ConflictError) as excinfo:
        client.fine_tuning.jobs.resume(job.id)  # not paused
    assert excinfo.value.code == "invalid_job_state"
    assert re.search(r"status is '(validating_files|queued|running)'", excinfo.value.message)  # names the status
    assert excinfo.value.response.headers["x-should-retry"] == "false"
    done = wait_for_status(client, job.id, {"succeeded"})
    for action in (client.fine_tuning.jobs.pause, client.fine_tuning.jobs.resume, client.fine_tuning.jobs.cancel):
        with pytest.raises(openai.ConflictError) as excinfo:
            action(done.id)
        assert excinfo.value.code == "invalid_job_state" and "succeeded" in excinfo.value.message
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.pause("ftjob-doesnotexist")


@pytest.mark.e2e
def test_auth_on_every_dialect(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert httpx.get(f"{server.url}/openapi.json").json()["openapi"].startswith("3.")
    for path in ("/v1/files", "/openai/v1/files", "/openai/files?api-version=2024-10-21"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 401
        body = response.json()
        openapi_schemas.validate(body, "ErrorResponse")
        assert body["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{server.url}{path}", headers={"api-key": "wrong"}).status_code == 401
        assert httpx.get(f"{server.url}{path}", headers={"api-key": server.api_key}).status_code == 200
        bearer = {"Authorization": f"Bearer {server.api_key}"}
        assert httpx.get(f"{server.url}{path}", headers=bearer).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server.url}/v1", api_key="nope", max_retries=0).files.list()


@pytest.mark.e2e
def test_api_version_rules(server: RunningServer) -> None:
    headers = {"api-key": server.api_key}
    get = lambda path: httpx.get(f"{server.url}{path}", headers=headers)  # noqa: E731
    assert get("/openai/v1/files?api-version=v1").status_code == 200
    assert get("/openai/v1/files?api-version=preview").status_code == 200
    bad = get("/openai/v1/files?api-version=2024-10-21")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "api-version"
    assert get("/openai/files").status_code == 400
    assert get("/openai/files?api-version=yesterday").status_code == 400
    assert get("/openai/files?api-version=2024-10-21").status_code == 200
    assert get("/openai/files?api-version=2025-04-01-preview").status_code == 200


@pytest.mark.e2e
def test_azure_dated_creates_answer_201_with_location(server: RunningServer) -> None:
    headers = {"api-key": server.api_key}
    version = "api-version=2025-04-01-preview"
    upload = httpx.post(
        f"{server.url}/openai/files?{version}",
        headers=headers,
        files={"file": ("t.jsonl", jsonl_bytes(valid_examples(12)))},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 201, upload.text
    file_id = upload.json()["id"]
    assert upload.headers["location"].startswith(f"/openai/files/{file_id}")
    created = httpx.post(
        f"{server.url}/openai/fine_tuning/jobs?{version}",
        headers=headers,
        json={"model": TINY_MODEL_NAME, "training_file": file_id, "hyperparameters": {"n_epochs": -1}},
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["location"].startswith(f"/openai/fine_tuning/jobs/{job['id']}")
    assert job["hyperparameters"]["n_epochs"] == "auto"  # Azure's -1 means auto
    assert "apim-request-id" in created.headers
    httpx.post(f"{server.url}/openai/fine_tuning/jobs/{job['id']}/cancel?{version}", headers=headers)
