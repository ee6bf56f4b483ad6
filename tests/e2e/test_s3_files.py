"""A real server whose blob store is S3 (SeaweedFS on loopback), driven by the official SDK: files go to the
bucket, never to the data folder's `files/`, and a fine-tuning job reads its training file from the bucket
and stores its result file and its artefacts (model, checkpoints' weights, manifest last) there."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from openft.storage import S3BlobStore
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.seaweedfs import SeaweedFS, s3_environment
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for_status

PREFIX = "deploy-1/files"


@pytest.fixture(scope="module")
def s3_server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, seaweedfs: SeaweedFS
) -> Iterator[RunningServer]:
    env = seaweedfs.server_environment(f"s3://{seaweedfs.bucket}/{PREFIX}")
    running = start_server(tmp_path_factory.mktemp("s3-server-data"), models_dir, extra_env=env)
    yield running
    running.stop()


def bucket_keys(seaweedfs: SeaweedFS, *, recursive: bool = False) -> list[str]:
    """The objects directly under the store's prefix (the blobs), or all of them."""
    delimiter = {} if recursive else {"Delimiter": "/"}
    listing = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=f"{PREFIX}/", **delimiter)
    return sorted(item["Key"][len(PREFIX) + 1 :] for item in listing.get("Contents", []))


def files_on_disk(server: RunningServer) -> list[Path]:
    return [p for p in (server.data_dir / "files").rglob("*") if p.is_file()]


@pytest.mark.e2e
def test_files_live_in_the_bucket(s3_server: RunningServer, seaweedfs: SeaweedFS) -> None:
    client = OpenAI(base_url=f"{s3_server.url}/v1", api_key=s3_server.api_key, max_retries=0)
    small = jsonl_bytes(valid_examples(12))
    large = b'{"pad": "' + b"x" * (9 * 1024 * 1024) + b'"}\n'  # past one part: a multipart upload
    created = [
        client.files.create(file=("train.jsonl", small), purpose="fine-tune"),
        client.files.create(file=("large.jsonl", large), purpose="fine-tune"),
    ]
    assert [f.bytes for f in created] == [len(small), len(large)]
    assert bucket_keys(seaweedfs) == sorted(f.id for f in created)  # no staging object left either
    assert {f.id for f in client.files.list(purpose="fine-tune")} >= {f.id for f in created}
    assert client.files.retrieve(created[1].id).filename == "large.jsonl"
    assert client.files.content(created[0].id).read() == small
    assert client.files.content(created[1].id).read() == large
    assert files_on_disk(s3_server) == []  # only the bucket holds files

    # the data check reads a local copy: downloaded into the cache, not into files/
    check = httpx.get(
        f"{s3_server.url}/v1/files/{created[0].id}/check?model={TINY_MODEL_NAME}",
        headers={"Authorization": f"Bearer {s3_server.api_key}"},
        timeout=60,
    )
    assert check.status_code == 200 and check.json()["ok"] is True, check.text
    cached = [p.name for p in (s3_server.data_dir / "cache" / "blobs").iterdir()]
    assert [name.split("@")[0] for name in cached] == [created[0].id]
    assert files_on_disk(s3_server) == []

    deleted = client.files.delete(created[1].id)
    assert deleted.deleted
    assert bucket_keys(seaweedfs) == [created[0].id]
    uploads = seaweedfs.client().list_multipart_uploads(Bucket=seaweedfs.bucket, Prefix=f"{PREFIX}/")
    assert uploads.get("Uploads", []) == []


@pytest.mark.e2e
def test_job_reads_its_training_file_from_the_bucket_and_stores_its_artefacts_there(
    s3_server: RunningServer, seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = OpenAI(base_url=f"{s3_server.url}/v1", api_key=s3_server.api_key, max_retries=0)
    training = client.files.create(file=("train.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=TINY_MODEL_NAME,
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
    )
    done = wait_for_status(client, job.id, {"succeeded"})
    (result_id,) = done.result_files
    assert result_id in bucket_keys(seaweedfs)  # the result file went to the bucket
    rows = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert [int(row["step"]) for row in rows] == [1, 2, 3]
    assert files_on_disk(s3_server) == []

    # the job's artefacts were stored before it succeeded, manifest last; they rebuild its model folder
    assert f"jobs/{job.id}/manifest.json" in bucket_keys(seaweedfs, recursive=True)
    for name, value in s3_environment().items():
        monkeypatch.setenv(name, value)
    store = S3BlobStore(seaweedfs.bucket, PREFIX, endpoint_url=seaweedfs.endpoint_url, cache_dir=tmp_path / "c")
    folders = store.folders("jobs")
    stored = {item.path for item in folders.manifest(job.id).files}
    assert "results.csv" in stored and "job.json" in stored and "training.jsonl" not in stored
    assert not any("/state/" in path for path in stored)
    job_folder = s3_server.data_dir / "cache" / "jobs" / job.id  # with an object store the job folders are a cache
    model_files = {p.relative_to(job_folder).as_posix() for p in (job_folder / "model").rglob("*") if p.is_file()}
    assert model_files and model_files <= stored
    folders.pull(job.id, tmp_path / "pulled")
    for path in model_files:
        assert (tmp_path / "pulled" / path).read_bytes() == (job_folder / path).read_bytes()

    # the job folder is a cache: its model gone (another machine, a lost disk), serving restores it from the bucket
    original = {path: (job_folder / path).read_bytes() for path in model_files}
    shutil.rmtree(job_folder / "model")
    reply = client.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.choices and reply.model == done.fine_tuned_model
    assert {path: (job_folder / path).read_bytes() for path in model_files} == original

    # deleting the fine-tuned model deletes the bucket's copy of its weights too
    assert client.models.delete(done.fine_tuned_model).deleted
    assert not folders.exists(job.id)
    assert [key for key in bucket_keys(seaweedfs, recursive=True) if key.startswith(f"jobs/{job.id}/")] == []


@pytest.mark.e2e
def test_a_missing_bucket_stops_the_server_at_start_with_the_reason(
    tmp_path: Path, models_dir: Path, seaweedfs: SeaweedFS
) -> None:
    env = seaweedfs.server_environment("s3://no-such-bucket/x")
    with pytest.raises(RuntimeError, match="server exited") as info:
        start_server(tmp_path / "data", models_dir, extra_env=env)
    assert "error: cannot use the blob store s3://no-such-bucket/x" in str(info.value)
    assert "the bucket does not exist" in str(info.value)
    assert "Traceback" not in str(info.value)  # one line for the operator
