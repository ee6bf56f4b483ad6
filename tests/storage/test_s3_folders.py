"""FolderMirror on a real S3 server: a folder is stored exactly when its manifest is (written last), pulled
whole and checked, or not at all; the orphan sweep of blobs never sees folders."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path, PurePosixPath

import pytest

from openft.storage import S3BlobStore
from openft.storage.s3 import PART_BYTES
from tests.support.seaweedfs import SeaweedFS


@pytest.fixture
def store(seaweedfs: SeaweedFS, tmp_path: Path) -> S3BlobStore:
    prefix = f"t-{uuid.uuid4().hex[:10]}"
    return S3BlobStore(seaweedfs.bucket, prefix, endpoint_url=seaweedfs.endpoint_url, cache_dir=tmp_path / "cache")


def make_job_folder(root: Path) -> dict[str, bytes]:
    files = {
        "model/adapter_model.safetensors": os.urandom(PART_BYTES + 1234),  # multipart
        "model/adapter_config.json": b'{"r": 8}',
        "checkpoints/step_000002/adapter/adapter_model.safetensors": os.urandom(5000),
        "checkpoints/step_000002/meta.json": b"{}",
        "checkpoints/step_000002/state/optimizer.pt": os.urandom(3000),
        "results.csv": b"step,train_loss\n1,0.5\n",
        "training.jsonl": b'{"messages": []}\n',
        ".tmp-model-1-abcd/x": b"a temp file of a write in progress",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return files


def servable(relative: PurePosixPath) -> bool:
    return "state" not in relative.parts and relative.name != "training.jsonl"


def bucket_keys(store: S3BlobStore) -> list[str]:
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return sorted(item["Key"][len(store.prefix) + 1 :] for item in listing.get("Contents", []))


def test_push_then_pull_round_trips_what_include_accepts(store: S3BlobStore, tmp_path: Path) -> None:
    files = make_job_folder(tmp_path / "job")
    folders = store.folders("jobs")
    manifest = folders.push("ftjob-1", tmp_path / "job", include=servable)
    kept = {path: data for path, data in files.items() if servable(PurePosixPath(path)) and not path.startswith(".")}
    assert {f.path for f in manifest.files} == set(kept)
    assert all(f.sha256 == hashlib.sha256(kept[f.path]).hexdigest() for f in manifest.files)
    assert bucket_keys(store) == sorted(["jobs/ftjob-1/manifest.json", *(f"jobs/ftjob-1/files/{p}" for p in kept)])
    assert list(store.keys_older_than(-60)) == []  # folders are not blobs: the orphan sweep never sees them

    dest = tmp_path / "cache" / "jobs" / "ftjob-1"
    folders.pull("ftjob-1", dest)
    pulled = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert pulled == kept
    assert [p.name for p in dest.parent.iterdir()] == ["ftjob-1"]  # no temp folder left


def test_a_folder_without_its_manifest_is_not_there(store: S3BlobStore, tmp_path: Path) -> None:
    """A push killed before its manifest leaves files nobody reads; pull and exists say it is absent."""
    make_job_folder(tmp_path / "job")
    folders = store.folders("jobs")
    folders.push("ftjob-2", tmp_path / "job", include=servable)
    store.client.delete_object(Bucket=store.bucket, Key=f"{store.prefix}/jobs/ftjob-2/manifest.json")
    assert not folders.exists("ftjob-2")
    with pytest.raises(FileNotFoundError):
        folders.pull("ftjob-2", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_pull_refuses_a_file_that_does_not_match_the_manifest(store: S3BlobStore, tmp_path: Path) -> None:
    make_job_folder(tmp_path / "job")
    folders = store.folders("jobs")
    folders.push("ftjob-3", tmp_path / "job", include=servable)
    key = f"{store.prefix}/jobs/ftjob-3/files/results.csv"
    store.client.put_object(Bucket=store.bucket, Key=key, Body=b"tampered")
    with pytest.raises(OSError, match="does not match its manifest"):
        folders.pull("ftjob-3", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and list(tmp_path.glob(".tmp-dest*")) == []


def test_push_again_replaces_and_delete_removes_everything(store: S3BlobStore, tmp_path: Path) -> None:
    make_job_folder(tmp_path / "job")
    folders = store.folders("jobs")
    folders.push("ftjob-4", tmp_path / "job")
    (tmp_path / "job" / "results.csv").unlink()
    second = folders.push("ftjob-4", tmp_path / "job")
    assert "results.csv" not in {f.path for f in second.files}
    assert "jobs/ftjob-4/files/results.csv" not in bucket_keys(store)
    folders.delete("ftjob-4")
    assert bucket_keys(store) == []
    assert not folders.exists("ftjob-4")


@pytest.mark.parametrize("bad", ["../x", "a/../../b", "/etc/passwd", "a/.hidden", "a b"])
def test_manifest_paths_outside_the_folder_are_refused(store: S3BlobStore, tmp_path: Path, bad: str) -> None:
    folders = store.folders("jobs")
    (tmp_path / "job").mkdir()
    folders.push("ftjob-5", tmp_path / "job")
    entry = {"path": bad, "size": 1, "sha256": "x"}
    manifest = json.dumps({"version": 1, "name": "ftjob-5", "created_at": 0, "files": [entry]})
    store.client.put_object(Bucket=store.bucket, Key=f"{store.prefix}/jobs/ftjob-5/manifest.json", Body=manifest)
    with pytest.raises(ValueError):
        folders.pull("ftjob-5", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path / "x").exists()


def test_restore_missing_adds_only_what_the_folder_lacks(store: S3BlobStore, tmp_path: Path) -> None:
    files = make_job_folder(tmp_path / "job")
    folders = store.folders("jobs")
    folders.push("ftjob-6", tmp_path / "job", include=servable)
    local = tmp_path / "cache-of-job"
    local.mkdir()
    (local / "results.csv").write_bytes(b"local copy")
    (local / "train.log").write_bytes(b"log")
    assert folders.restore_missing("ftjob-6", local) == ["checkpoints", "model"]
    assert (local / "results.csv").read_bytes() == b"local copy" and (local / "train.log").exists()
    model = "model/adapter_model.safetensors"
    assert (local / model).read_bytes() == files[model]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "cache-of-job", "job"]  # no temp left
    assert folders.restore_missing("ftjob-6", tmp_path / "new") == ["checkpoints", "model", "results.csv"]
