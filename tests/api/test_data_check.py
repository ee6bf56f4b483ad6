"""`GET /v1/files/{id}/check` (openft's extension): the `openft data check --json` report of an uploaded file,
on every URL dialect, only for the caller's organization, 400 for an unknown model, in /openapi.json."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from openft.api.app import create_app
from openft.cli import app as cli_app
from openft.services.container import Container, build_container
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, malformed_cases, preference_examples, valid_examples

KEY = "sk-openft-check-test"
PATHS = {
    "openai": "/v1/files/{id}/check",
    "azure-v1": "/openai/v1/files/{id}/check",
    "azure-dated": "/openai/files/{id}/check?api-version=2025-04-01-preview",
}


@pytest.fixture
def served(tmp_path: Path, models_dir: Path) -> Iterator[tuple[TestClient, Container]]:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key=KEY, run_worker=False)
    container = build_container(settings, with_worker=False)
    with TestClient(create_app(settings, container=container)) as client:
        yield client, container


def _upload(client: TestClient, content: bytes, key: str = KEY, name: str = "train.jsonl") -> str:
    response = client.post(
        "/v1/files",
        files={"file": (name, content)},
        data={"purpose": "fine-tune"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _check(client: TestClient, file_id: str, query: str = "", key: str = KEY, dialect: str = "openai") -> Any:
    url = PATHS[dialect].format(id=file_id)
    url += ("&" if "?" in url else "?") + query if query else ""
    return client.get(url, headers={"api-key": key})


@pytest.mark.parametrize("dialect", list(PATHS))
def test_report_of_a_valid_file_on_every_dialect(served: tuple[TestClient, Container], dialect: str) -> None:
    client, _container = served
    file_id = _upload(client, jsonl_bytes(valid_examples(12)))
    response = _check(client, file_id, dialect=dialect)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["object"] == "openft.data_check" and report["ok"] is True and report["problems"] == []
    assert (report["file"], report["filename"], report["method"], report["model"]) == (
        file_id,
        "train.jsonl",
        "supervised",
        TINY_MODEL_NAME,  # the models dir's model is the default
    )
    assert report["stats"]["examples"] == 12 and report["stats"]["tokens"]["min"] > 0
    assert set(report["auto"]) == {"n_epochs", "batch_size", "learning_rate_multiplier"} and report["steps"] > 0
    assert report["estimate"]["source"] == "table" and report["estimate"]["seconds"] > 0
    memory = report["memory"]
    assert memory["fine_tuning_mode"] == "lora" and memory["fits"] is True and memory["peak_bytes"] > 0
    assert memory["fits_on"] == ["cpu", "24 GB", "80 GB"]


def test_same_report_as_the_cli(served: tuple[TestClient, Container], tmp_path: Path, models_dir: Path) -> None:
    client, _container = served
    content, _code, _line = malformed_cases()["bad_weight"]
    file_id = _upload(client, content, name="bad.jsonl")
    served_report = _check(client, file_id, f"model={TINY_MODEL_NAME}").json()
    (tmp_path / "bad.jsonl").write_bytes(content)
    result = CliRunner().invoke(
        cli_app,
        [
            "data",
            "check",
            str(tmp_path / "bad.jsonl"),
            "--models-dir",
            str(models_dir),
            "--json",
            "--estimate",
            "table",
        ],
        env={"OPENFT_DATA_DIR": str(tmp_path / "cli-data")},
    )
    assert result.exit_code == 1
    local = json.loads(result.stdout)
    assert served_report["problems"] == local["problems"] and served_report["problems"][0]["line"] == 11
    for key in ("method", "model", "ok", "n_problems", "stats", "auto", "steps", "notes"):
        assert served_report[key] == local[key], key
    changing = ("available_bytes", "detail")  # this machine's free memory, read at each check
    for name, value in served_report["memory"].items():
        assert name in changing or value == local["memory"][name], name
    assert (served_report["file"], local["file"]) == (file_id, None)


def test_method_is_detected_or_given(served: tuple[TestClient, Container]) -> None:
    client, _container = served
    pairs = _upload(client, jsonl_bytes(preference_examples(12)))
    assert _check(client, pairs).json()["method"] == "dpo"
    as_chat = _check(client, pairs, "method=supervised").json()
    assert as_chat["ok"] is False and as_chat["problems"][0] == {
        "line": 1,
        "code": "invalid_file_format",
        "message": 'this is preference (DPO) data; a supervised job needs a "messages" list',
    }
    bad = _check(client, pairs, "method=ppo")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "method"
    prompts = [{"messages": [{"role": "user", "content": f"Say {i}."}], "answer": str(i)} for i in range(12)]
    rft = _check(client, _upload(client, jsonl_bytes(prompts)), "method=reinforcement")
    assert rft.status_code == 200, rft.text
    assert rft.json()["method"] == "reinforcement" and rft.json()["ok"] is True and rft.json()["memory"] is None


def test_the_memory_estimate_is_for_the_mode_asked(served: tuple[TestClient, Container]) -> None:
    client, _container = served
    file_id = _upload(client, jsonl_bytes(valid_examples(12)))
    lora = _check(client, file_id).json()["memory"]
    qlora = _check(client, file_id, "fine_tuning_mode=qlora").json()["memory"]
    full = _check(client, file_id, "fine_tuning_mode=full").json()["memory"]
    assert [m["fine_tuning_mode"] for m in (lora, qlora, full)] == ["lora", "qlora", "full"]
    assert len({m["peak_bytes"] for m in (lora, qlora, full)}) == 3
    bad = _check(client, file_id, "fine_tuning_mode=int8")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "fine_tuning_mode"


def test_unknown_model_is_400_and_another_organizations_file_404(served: tuple[TestClient, Container]) -> None:
    client, container = served
    file_id = _upload(client, jsonl_bytes(valid_examples(12)))
    unknown = _check(client, file_id, "model=no-such-model")
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "model" and unknown.json()["error"]["code"] == "model_not_found"
    hostile = _check(client, file_id, "model=../../etc")
    assert hostile.status_code == 400 and hostile.json()["error"]["param"] == "model"

    other = container.keys.create("other-org").key
    assert _check(client, file_id, key=other).status_code == 404  # exactly like a file nobody uploaded
    own = _upload(client, jsonl_bytes(valid_examples(12)), key=other)
    assert _check(client, own, key=other).status_code == 200
    missing = _check(client, "file-nope")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "file_id"


def test_documented_in_openapi(served: tuple[TestClient, Container]) -> None:
    client, _container = served
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/files/{file_id}/check", "/openai/v1/files/{file_id}/check", "/openai/files/{file_id}/check"):
        operation = paths[path]["get"]
        assert {p["name"] for p in operation["parameters"]} >= {"file_id", "model", "method", "fine_tuning_mode"}
        assert "200" in operation["responses"] and "404" in operation["responses"]


def _served_with(tmp_path: Path, models_dir: Path, **budget: Any) -> tuple[TestClient, Container]:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key=KEY, run_worker=False, **budget)
    container = build_container(settings, with_worker=False)
    return TestClient(create_app(settings, container=container)), container


def test_a_file_past_the_byte_budget_is_checked_in_part_and_says_so(tmp_path: Path, models_dir: Path) -> None:
    rows = valid_examples(40)
    content = jsonl_bytes(rows)
    first_line = len(json.dumps(rows[0])) + 1
    client, _container = _served_with(tmp_path, models_dir, data_check_max_bytes=first_line * 5)
    with client:
        report = _check(client, _upload(client, content)).json()
    assert report["truncated"] is True and report["checked_examples"] == 5
    assert report["stats"]["examples"] == 5
    assert report["problems"] == []  # five examples of a longer file are not "too few examples"
    assert "stopped early" in report["notes"][-1] and "byte budget" in report["notes"][-1]


def test_a_check_past_its_time_budget_reports_what_it_checked(tmp_path: Path, models_dir: Path) -> None:
    client, _container = _served_with(tmp_path, models_dir, data_check_seconds=1e-9)
    with client:
        report = _check(client, _upload(client, jsonl_bytes(valid_examples(12)))).json()
    assert report["truncated"] is True and report["checked_examples"] == 0
    assert "second budget ran out" in report["notes"][-1]


def test_a_many_turn_file_is_checked_whole_within_the_default_budget(served: tuple[TestClient, Container]) -> None:
    """Long conversations used to cost turns² renders; the check now reads all of them, untruncated."""
    client, _container = served
    rows = []
    for i in range(12):
        messages: list[dict[str, Any]] = []
        for turn in range(150):
            messages += [
                {"role": "user", "content": f"Question {turn} of conversation {i}?"},
                {"role": "assistant", "content": f"Answer {turn}: the Zorblax kettle boils water in 90 seconds."},
            ]
        rows.append({"messages": messages})
    report = _check(client, _upload(client, jsonl_bytes(rows))).json()
    assert report["truncated"] is False and report["checked_examples"] is None
    assert report["ok"] is True and report["stats"]["examples"] == 12
