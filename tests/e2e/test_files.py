"""The Files API through the SDK and raw HTTP: upload, list, retrieve, content, delete, limits."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support import openapi_schemas
from tests.support.server import RunningServer, start_server


@pytest.mark.e2e
def test_files_round_trip_and_listing(client: OpenAI, server: RunningServer) -> None:
    payloads = [f'{{"n": {i}}}\n'.encode() * (i + 1) for i in range(3)]
    created = [
        client.files.create(file=(f"../../etc/f{i}.jsonl", p), purpose="fine-tune") for i, p in enumerate(payloads)
    ]
    assert [f.filename for f in created] == ["f0.jsonl", "f1.jsonl", "f2.jsonl"]  # never a path
    for item, payload in zip(created, payloads, strict=True):
        assert client.files.content(item.id).read() == payload
        assert item.bytes == len(payload)
    newest_first = [f.id for f in client.files.list(purpose="fine-tune", limit=2)]
    assert newest_first[:2] == [created[2].id, created[1].id]
    oldest_first = [f.id for f in client.files.list(purpose="fine-tune", order="asc")]
    assert oldest_first.index(created[0].id) < oldest_first.index(created[2].id)
    raw = httpx.get(f"{server.url}/v1/files?limit=2", headers={"Authorization": f"Bearer {server.api_key}"}).json()
    openapi_schemas.validate(raw, "ListFilesResponse")
    assert raw["has_more"] is True and raw["first_id"] == raw["data"][0]["id"]
    deleted = client.files.delete(created[0].id)
    assert deleted.deleted and deleted.id == created[0].id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created[0].id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created[0].id)
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="fine-tune-results")  # type: ignore[arg-type]
    assert excinfo.value.param == "purpose"


@pytest.mark.e2e
def test_expiring_file(client: OpenAI) -> None:
    item = client.files.create(
        file=("e.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert item.expires_at == item.created_at + 3600
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.files.create(
            file=("e.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": 5}
        )
    assert excinfo.value.param == "expires_after.seconds"


@pytest.mark.e2e
def test_upload_over_the_limit_is_413_and_leaves_nothing(tmp_path: Path, models_dir: Path) -> None:
    server = start_server(tmp_path / "data", models_dir, extra_env={"OPENFT_MAX_UPLOAD_BYTES": "100000"})
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as excinfo:
            client.files.create(file=("big.jsonl", b"x" * 300_000), purpose="fine-tune")
        assert excinfo.value.status_code == 413
        assert "OPENFT_MAX_UPLOAD_BYTES" in excinfo.value.message
        assert list(client.files.list()) == []
        leftovers = [p for p in (server.data_dir / "files").rglob("*") if p.is_file()]
        assert leftovers == []
        assert client.files.create(file=("ok.jsonl", b"x" * 1000), purpose="fine-tune").bytes == 1000
    finally:
        server.stop()
