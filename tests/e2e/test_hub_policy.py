"""Hugging Face hub ids are opt-in (`OPENFT_HUB_MODELS`), and no API request ever calls the hub.

A real server on loopback, in online mode, whose hub is a fake one on loopback that records every request
(`HF_ENDPOINT`), and whose HF cache (`HF_HOME`) holds one allowed and one forbidden model. The worker is off,
so every hub request the fake sees would have come from an API request.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.data import jsonl_bytes, valid_examples
from tests.support.fake_hub import SHA, FakeHub, fake_hub
from tests.support.server import RunningServer, start_server
from tests.support.waiting import TERMINAL, wait_for

ALLOWED = "acme/tiny-chat"
FORBIDDEN_CACHED = "evil/tiny-chat"


def _cache(hf_home: Path, repo_id: str, model: Path) -> None:
    """huggingface_hub's cache layout: hub/models--org--name/{refs/main, snapshots/<commit>/…}."""
    entry = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SHA)
    shutil.copytree(model, entry / "snapshots" / SHA)


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    files = {"config.json": 700, "model.safetensors": 10_000, "tokenizer.json": 2000}
    with fake_hub({ALLOWED: files, "acme/remote": files, "evil/remote": files}) as running:
        yield running


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, hub: FakeHub) -> Iterator[RunningServer]:
    hf_home = tmp_path_factory.mktemp("hf-home")
    _cache(hf_home, ALLOWED, models_dir / "tiny-llama")
    _cache(hf_home, FORBIDDEN_CACHED, models_dir / "tiny-llama")
    env = {
        "HF_HUB_OFFLINE": "0",
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(hf_home),
        "HF_TOKEN": "hf_operator_secret",
        "OPENFT_HUB_MODELS": "acme/*, other/exact",
    }
    running = start_server(tmp_path_factory.mktemp("data"), models_dir, extra_env=env, extra_args=["--no-worker"])
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(server: RunningServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=f"{server.url}/v1", headers=headers, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def training_file(api: httpx.Client) -> str:
    response = api.post(
        "/files", data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", jsonl_bytes(valid_examples(12)))}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def test_a_hub_id_outside_the_allow_list_is_model_not_found(
    api: httpx.Client, training_file: str, hub: FakeHub
) -> None:
    for model in ("evil/remote", FORBIDDEN_CACHED, "Acme/remote"):
        job = _error(api.post("/fine_tuning/jobs", json={"model": model, "training_file": training_file}), 400)
        assert (job["code"], job["param"]) == ("model_not_found", "model")
        assert "acme" not in job["message"]  # the allow-list is not revealed
        # chat: exactly the answer a name nobody made gets
        chat = _error(
            api.post("/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}), 404
        )
        assert (chat["code"], chat["param"]) == ("model_not_found", "model")
    assert hub.requests == []


def test_an_allowed_hub_id_is_accepted_without_asking_the_hub(
    api: httpx.Client, training_file: str, hub: FakeHub
) -> None:
    created = api.post("/fine_tuning/jobs", json={"model": "acme/remote", "training_file": training_file})
    assert created.status_code == 200, created.text
    assert created.json()["model"] == "acme/remote" and created.json()["status"] in ("validating_files", "queued")
    # not downloaded: inference says so instead of downloading in the request
    chat = _error(
        api.post("/chat/completions", json={"model": "acme/remote", "messages": [{"role": "user", "content": "hi"}]}),
        404,
    )
    assert chat["code"] == "model_not_found" and "not downloaded" in chat["message"]
    assert hub.requests == []


def test_listing_shows_allowed_cached_hub_models_only(api: httpx.Client, hub: FakeHub) -> None:
    names = {model["id"] for model in api.get("/models").json()["data"]}
    assert ALLOWED in names and FORBIDDEN_CACHED not in names and "acme/remote" not in names
    reply = api.post(
        "/chat/completions",
        json={"model": ALLOWED, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0},
    )
    assert reply.status_code == 200, reply.text
    assert hub.requests == []


def test_the_worker_refuses_a_hub_model_over_the_size_cap_before_fetching_weights(
    tmp_path: Path, models_dir: Path
) -> None:
    """The one download path: the job's trainer asks the hub for the sizes, and fails the job over the cap."""
    files = {
        "config.json": 700,
        "model-00001-of-00002.safetensors": 3 * 10**9,
        "model-00002-of-00002.safetensors": 10**9,
    }
    with fake_hub({"acme/big": files}) as hub:
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "OPENFT_HUB_MODELS": "acme/*",
            "OPENFT_MAX_MODEL_GB": "2.5",
        }
        server = start_server(tmp_path / "data", models_dir, extra_env=env)
        try:
            headers = {"Authorization": f"Bearer {server.api_key}"}
            with httpx.Client(base_url=f"{server.url}/v1", headers=headers, timeout=60) as api:
                upload = api.post(
                    "/files",
                    data={"purpose": "fine-tune"},
                    files={"file": ("train.jsonl", jsonl_bytes(valid_examples(12)))},
                )
                created = api.post(
                    "/fine_tuning/jobs", json={"model": "acme/big", "training_file": upload.json()["id"]}
                )
                assert created.status_code == 200, created.text
                job_id = created.json()["id"]
                job = wait_for(
                    lambda: (j := api.get(f"/fine_tuning/jobs/{job_id}").json())["status"] in TERMINAL and j,
                    timeout=180,
                    what="the job to end",
                )
        finally:
            server.stop()
    assert job["status"] == "failed", job
    assert job["error"]["code"] == "model_not_found" and job["error"]["param"] == "model"
    assert "4.0 GB to download, over this server's limit of 2.5 GB" in job["error"]["message"]
    # sizes only: no file was fetched (huggingface_hub also asks for its agent registry; harmless)
    assert [r for r in hub.requests if "acme/big" in r] == ["GET /api/models/acme/big?blobs=true"]
    assert not any("/resolve/" in r for r in hub.requests), hub.requests
