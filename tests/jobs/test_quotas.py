"""Organization quotas over HTTP (the real app and services, in process): past `max_queued_jobs` creating a job
and past `max_storage_gb` an upload are 429 `quota_exceeded` in the OpenAI envelope, with no `Retry-After`
(waiting does not lift a quota); other organizations are not affected; the refused upload keeps no bytes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openft.api.app import create_app
from openft.errors import QuotaExceeded
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.container import Container, build_container
from openft.settings import Settings
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples

SERVER_KEY = "sk-openft-quota-server"


@pytest.fixture
def served(tmp_path: Path, models_dir: Path, database_url: str) -> Iterator[tuple[TestClient, Container]]:
    """The app on SQLite and on PostgreSQL (where the checks lock the organization's row)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        models_dir=models_dir,
        api_key=SERVER_KEY,
        run_worker=False,
        database_url=database_url,
    )
    container = build_container(settings, with_worker=False)
    with TestClient(create_app(settings, container=container)) as client:
        yield client, container
    container.engine.dispose()


def _upload(client: TestClient, key: str, content: bytes) -> object:
    return client.post(
        "/v1/files",
        files={"file": ("train.jsonl", content)},
        data={"purpose": "fine-tune"},
        headers={"Authorization": f"Bearer {key}"},
    )


def _create_job(client: TestClient, key: str, file_id: str) -> object:
    return client.post(
        "/v1/fine_tuning/jobs",
        json={"model": TINY_MODEL_NAME, "training_file": file_id},
        headers={"Authorization": f"Bearer {key}"},
    )


def _quota_error(response: object) -> dict[str, object]:
    assert response.status_code == 429, response.text  # type: ignore[attr-defined]
    assert "retry-after" not in response.headers  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "quota_exceeded" and error["type"] == "insufficient_quota"
    return error


def test_queued_jobs_beyond_the_limit_are_refused(served: tuple[TestClient, Container]) -> None:
    client, container = served
    key = container.keys.create("team-q", limits={"max_queued_jobs": 2}).key
    file_id = _upload(client, key, jsonl_bytes(valid_examples(12))).json()["id"]  # type: ignore[attr-defined]
    first = _create_job(client, key, file_id)
    assert first.status_code == 200, first.text  # type: ignore[attr-defined]
    assert _create_job(client, key, file_id).status_code == 200  # type: ignore[attr-defined]
    error = _quota_error(_create_job(client, key, file_id))
    assert "max_queued_jobs" in str(error["message"]) and "2" in str(error["message"])

    other = container.keys.create("team-other").key  # another organization is not held back
    other_file = _upload(client, other, jsonl_bytes(valid_examples(12))).json()["id"]  # type: ignore[attr-defined]
    assert _create_job(client, other, other_file).status_code == 200  # type: ignore[attr-defined]

    job_id = first.json()["id"]  # type: ignore[attr-defined]
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {key}"})
    assert cancelled.status_code == 200
    assert _create_job(client, key, file_id).status_code == 200  # type: ignore[attr-defined]


def test_an_upload_over_the_storage_limit_is_refused_and_not_kept(served: tuple[TestClient, Container]) -> None:
    client, container = served
    content = jsonl_bytes(valid_examples(12))
    limit_gb = (len(content) * 2 + 10) / 1e9  # room for two uploads, not three
    key = container.keys.create("team-s", limits={"max_storage_bytes": int(limit_gb * 1e9)}).key
    for _ in range(2):
        assert _upload(client, key, content).status_code == 200  # type: ignore[attr-defined]
    stored = sorted(p.name for p in container.settings.files_dir.rglob("file-*"))
    assert len(stored) == 2
    error = _quota_error(_upload(client, key, content))
    assert error["param"] == "file" and "max_storage_gb" in str(error["message"])
    assert sorted(p.name for p in container.settings.files_dir.rglob("file-*")) == stored  # no bytes kept
    listed = client.get("/v1/files", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert len(listed) == 2
    file_id = listed[0]["id"]
    assert client.delete(f"/v1/files/{file_id}", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert _upload(client, key, content).status_code == 200  # type: ignore[attr-defined]


def test_concurrent_creates_never_pass_the_limit(served: tuple[TestClient, Container]) -> None:
    """Eight creates at once against a limit of 3: exactly 3 jobs (the check and the insert are one transaction
    with the organization's row locked)."""
    _client, container = served
    org_id = container.keys.create("team-c", limits={"max_queued_jobs": 3}).info.org_id
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(jsonl_bytes(valid_examples(12)))
    file_id = container.files.create(org_id, purpose="fine-tune", filename="t", writer=writer).id
    params = FineTuningJobCreate.model_validate({"model": TINY_MODEL_NAME, "training_file": file_id})
    outcomes: list[str] = []

    def create() -> None:
        try:
            container.fine_tuning.create(org_id, params)
            outcomes.append("created")
        except QuotaExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
