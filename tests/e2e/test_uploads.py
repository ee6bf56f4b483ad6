"""The Uploads API on a real server, through the official SDK: `client.uploads.upload_file_chunked` in several
parts makes a File that reads back byte for byte and that a fine-tuning job accepts; the wire objects match
OpenAI's schemas in every dialect; cancel and expiry delete the parts; every mistake is a 4xx naming its field.
One test runs the whole flow on an S3 store (SeaweedFS), where parts and the assembled file live in the bucket."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from sqlalchemy import create_engine, update

from openft.db.tables import UploadRow
from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import DIALECTS
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.node_sdk import run_node_checks
from tests.support.openapi_schemas import validate
from tests.support.seaweedfs import SeaweedFS
from tests.support.server import RunningServer, start_server

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def stored_parts(server: RunningServer) -> list[str]:
    return sorted(p.name for p in (server.data_dir / "files").iterdir() if p.name.startswith("part_"))


def validate_upload(body: dict[str, Any]) -> None:
    """OpenAI's `Upload` schema types `file` as `allOf: [OpenAIFile, {nullable: true}]`, which JSON Schema reads
    as "an OpenAIFile and …", so a pending upload's `"file": null` (what OpenAI sends) is checked here and the
    rest against the schema."""
    if body.get("file") is None:
        assert "file" in body and body["file"] is None
        body = {key: value for key, value in body.items() if key != "file"}
    validate(body, "Upload")


def new_upload(client: OpenAI, size: int, **fields: Any) -> Any:
    return client.uploads.create(
        bytes=size, filename="train.jsonl", purpose="fine-tune", mime_type="text/jsonl", **fields
    )


def bad_request(call: Callable[[], object], param: str | None, match: str, status: int = 400) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    assert caught.value.status_code == status, caught.value.response.text
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param, body
    assert match in body["error"]["message"], body


def test_upload_file_chunked_makes_a_file_a_job_accepts(server: RunningServer, client: OpenAI, tmp_path: Path) -> None:
    content = jsonl_bytes(valid_examples(40))
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    part_size = len(content) // 4 + 1  # four parts, the last one shorter

    upload = client.uploads.upload_file_chunked(
        file=path,
        mime_type="text/jsonl",
        purpose="fine-tune",
        part_size=part_size,
        md5=hashlib.md5(content).hexdigest(),
    )

    assert upload.status == "completed" and upload.id.startswith("upload_")
    assert upload.bytes == len(content) and upload.filename == "train.jsonl"
    assert upload.file is not None and upload.file.bytes == len(content)
    retrieved = client.files.retrieve(upload.file.id)
    assert (retrieved.filename, retrieved.purpose, retrieved.bytes) == ("train.jsonl", "fine-tune", len(content))
    assert client.files.content(upload.file.id).read() == content
    assert stored_parts(server) == []  # the four parts were deleted once assembled
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=upload.file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
    )
    assert job.training_file == upload.file.id
    client.fine_tuning.jobs.cancel(job.id)  # creating is what is tested; no need to train


@pytest.mark.parametrize("dialect", DIALECTS)
def test_wire_objects_match_openais_schemas(client_for: Callable[[str], OpenAI], dialect: str) -> None:
    client = client_for(dialect)
    content = b'{"prompt": "a", "completion": "b"}\n' * 3
    created = client.uploads.with_raw_response.create(
        bytes=len(content),
        filename="t.jsonl",
        purpose="fine-tune",
        mime_type="text/jsonl",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    assert created.status_code == 200  # also on the Azure dated dialect: an upload has no URL to GET
    upload = created.http_response.json()
    validate_upload(upload)
    assert (upload["status"], upload["object"], upload["file"]) == ("pending", "upload", None)
    assert upload["expires_at"] == upload["created_at"] + 3600

    part_ids = []
    for piece in (content[:10], content[10:]):
        part = client.uploads.parts.with_raw_response.create(upload_id=upload["id"], data=piece)
        assert part.status_code == 200
        body = part.http_response.json()
        validate(body, "UploadPart")
        assert body["object"] == "upload.part" and body["id"].startswith("part_") and body["upload_id"] == upload["id"]
        part_ids.append(body["id"])

    completed = client.uploads.with_raw_response.complete(upload_id=upload["id"], part_ids=part_ids)
    body = completed.http_response.json()
    validate_upload(body)
    validate(body["file"], "OpenAIFile")
    assert body["status"] == "completed" and body["file"]["bytes"] == len(content)
    assert body["file"]["expires_at"] - body["file"]["created_at"] == 7200  # expires_after is the File's
    assert client.files.content(body["file"]["id"]).read() == content

    other = new_upload(client, 5)
    cancelled = client.uploads.with_raw_response.cancel(other.id).http_response.json()
    validate_upload(cancelled)
    assert cancelled["status"] == "cancelled"


def test_cancel_deletes_the_parts_and_ends_the_upload(server: RunningServer, client: OpenAI) -> None:
    upload = new_upload(client, 8)
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abcd")
    assert part.id in stored_parts(server)
    assert client.uploads.cancel(upload.id).status == "cancelled"
    assert part.id not in stored_parts(server)
    bad_request(lambda: client.uploads.parts.create(upload_id=upload.id, data=b"efgh"), "upload_id", "it is cancelled")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[part.id]), "upload_id", "it is cancelled")
    assert client.uploads.cancel(upload.id).status == "cancelled"  # a retried cancel answers the same


def test_an_expired_upload_takes_no_parts(server: RunningServer, client: OpenAI) -> None:
    """An hour is simulated by moving the upload's times back in the server's database; the sweep that deletes
    the parts runs every minute and is tested in tests/services/test_uploads.py with a clock."""
    upload = new_upload(client, 8)
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abcdefgh")
    engine = create_engine(f"sqlite:///{server.data_dir / 'openft.db'}")
    with engine.begin() as connection:
        now = int(time.time())
        connection.execute(
            update(UploadRow).where(UploadRow.id == upload.id).values(created_at=now - 3601, expires_at=now - 1)
        )
    engine.dispose()
    bad_request(lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x"), "upload_id", "it is expired")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[part.id]), "upload_id", "it is expired")
    bad_request(lambda: client.uploads.cancel(upload.id), "upload_id", "expired")


def test_mistakes_are_refused_with_the_field_named(server: RunningServer, client: OpenAI) -> None:
    bad_request(lambda: new_upload(client, 8 * 1024 * MiB + 1), "bytes", "OPENFT_MAX_UPLOAD_TOTAL_BYTES")
    bad_request(lambda: new_upload(client, 0), "bytes", "positive")
    bad_request(
        lambda: client.uploads.create(bytes=5, filename="a", purpose="fine-tune-results", mime_type="text/jsonl"),  # type: ignore[arg-type]
        "purpose",
        "Invalid purpose",
    )
    headers = {"Authorization": f"Bearer {server.api_key}"}
    no_mime = httpx.post(
        f"{server.url}/v1/uploads", headers=headers, json={"bytes": 5, "filename": "a", "purpose": "fine-tune"}
    )
    assert no_mime.status_code == 400 and no_mime.json()["error"]["param"] == "mime_type", no_mime.text
    bad_request(lambda: client.uploads.parts.create(upload_id="upload_nope", data=b"x"), "upload_id", "No such", 404)
    bad_request(lambda: client.uploads.complete("upload_nope", part_ids=["part_x"]), "upload_id", "No such", 404)
    bad_request(lambda: client.uploads.cancel("upload_nope"), "upload_id", "No such", 404)

    upload = new_upload(client, 6)
    first = client.uploads.parts.create(upload_id=upload.id, data=b"abc").id
    second = client.uploads.parts.create(upload_id=upload.id, data=b"def").id
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[first]), "part_ids", "add up to 3 bytes")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[first, first]), "part_ids", "more than once")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[first, "part_x"]), "part_ids", "No part part_x")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[]), "part_ids", "at least one")
    bad_request(
        lambda: client.uploads.complete(upload.id, part_ids=[first, second], md5=hashlib.md5(b"defabc").hexdigest()),
        "md5",
        "MD5 checksum",
    )
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[first, second], md5="nope"), "md5", "32 hex")
    url = f"{server.url}/v1/uploads/{upload.id}/parts"
    no_data = httpx.post(url, headers=headers, files={"other": ("x", b"abc")}, timeout=30)
    assert no_data.status_code == 400 and no_data.json()["error"]["param"] == "other", no_data.text
    not_multipart = httpx.post(url, headers=headers, json={"data": "abc"}, timeout=30)
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["param"] == "data", not_multipart.text
    extra = httpx.post(url, headers=headers, files={"data": ("x", b"abc")}, data={"index": "1"}, timeout=30)
    assert extra.status_code == 400 and extra.json()["error"]["param"] == "index", extra.text
    done = client.uploads.complete(upload.id, part_ids=[first, second], md5=hashlib.md5(b"abcdef").hexdigest())
    assert done.file is not None and client.files.content(done.file.id).read() == b"abcdef"
    bad_request(lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x"), "upload_id", "it is completed")
    bad_request(lambda: client.uploads.complete(upload.id, part_ids=[first, second]), "upload_id", "it is completed")
    bad_request(lambda: client.uploads.cancel(upload.id), "upload_id", "completed")
    assert not {first, second} & set(stored_parts(server))


def test_a_part_over_64_mb_is_413(server: RunningServer, client: OpenAI) -> None:
    upload = new_upload(client, 65 * MiB)
    bad_request(
        lambda: client.uploads.parts.create(upload_id=upload.id, data=b"x" * (64 * MiB + 1)), "data", "64 MB", 413
    )
    before = stored_parts(server)
    full = client.uploads.parts.create(upload_id=upload.id, data=b"x" * (64 * MiB))  # exactly the SDK's default
    assert stored_parts(server) == sorted([*before, full.id])  # the refused part left nothing behind
    client.uploads.cancel(upload.id)
    assert stored_parts(server) == before


def test_another_organization_gets_404(server: RunningServer, client: OpenAI) -> None:
    command = [sys.executable, "-m", "openft", "keys", "create", "--org", "uploads-b", "--json"]
    made = subprocess.run([*command, "--data-dir", str(server.data_dir)], capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    other = OpenAI(base_url=f"{server.url}/v1", api_key=json.loads(made.stdout)["key"], max_retries=0)
    upload = new_upload(client, 3)
    part = client.uploads.parts.create(upload_id=upload.id, data=b"abc")
    bad_request(lambda: other.uploads.parts.create(upload_id=upload.id, data=b"abc"), "upload_id", "No such", 404)
    bad_request(lambda: other.uploads.complete(upload.id, part_ids=[part.id]), "upload_id", "No such", 404)
    bad_request(lambda: other.uploads.cancel(upload.id), "upload_id", "No such", 404)
    assert client.uploads.complete(upload.id, part_ids=[part.id]).status == "completed"


def test_the_node_sdk_uploads_in_parts(server: RunningServer, tmp_path: Path) -> None:
    """Node has no `upload_file_chunked`: its users call create / parts.create(toFile) / complete themselves."""
    path = tmp_path / "node.jsonl"
    path.write_bytes(jsonl_bytes(valid_examples(40)))
    checks = [{"name": "upload", "path": str(path), "partSize": 2000, "filename": "node.jsonl"}]
    result = run_node_checks(f"{server.url}/v1", server.api_key, checks)["upload"]
    assert result["status"] == "completed" and len(result["partIds"]) > 2 and result["sameBytes"]
    assert (result["file"]["filename"], result["file"]["bytes"]) == ("node.jsonl", path.stat().st_size)
    assert set(result["partIds"]).isdisjoint(stored_parts(server))  # completion removed its parts


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, seaweedfs: SeaweedFS
) -> Iterator[RunningServer]:
    env = seaweedfs.server_environment(f"s3://{seaweedfs.bucket}/uploads-test")
    running = start_server(tmp_path_factory.mktemp("s3-uploads"), models_dir, extra_env=env)
    yield running
    running.stop()


def test_parts_and_the_assembled_file_live_in_the_bucket(s3_server: RunningServer, seaweedfs: SeaweedFS) -> None:
    client = OpenAI(base_url=f"{s3_server.url}/v1", api_key=s3_server.api_key, max_retries=0)
    s3 = seaweedfs.client()

    def objects() -> list[str]:
        listing = s3.list_objects_v2(Bucket=seaweedfs.bucket, Prefix="uploads-test/")
        return sorted(item["Key"].removeprefix("uploads-test/") for item in listing.get("Contents", []))

    big = bytes(range(256)) * (40 * 1024)  # 10 MiB: past one S3 part, so the assembly is a multipart upload
    content = big + jsonl_bytes(valid_examples(3))
    upload = new_upload(client, len(content))
    parts = [client.uploads.parts.create(upload_id=upload.id, data=piece).id for piece in (big, content[len(big) :])]
    assert objects() == sorted(parts)
    done = client.uploads.complete(upload.id, part_ids=parts, md5=hashlib.md5(content).hexdigest())
    assert done.file is not None
    assert objects() == [done.file.id]  # parts deleted, no staging object left
    assert client.files.content(done.file.id).read() == content
    assert s3.list_multipart_uploads(Bucket=seaweedfs.bucket, Prefix="uploads-test/").get("Uploads", []) == []

    cancelled = new_upload(client, 4)
    part = client.uploads.parts.create(upload_id=cancelled.id, data=b"abcd")
    assert part.id in objects()
    client.uploads.cancel(cancelled.id)
    assert objects() == [done.file.id]
    assert not any(p.is_file() for p in (s3_server.data_dir / "files").rglob("*"))  # nothing on the local disk
