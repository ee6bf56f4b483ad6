"""S3BlobStore against a real S3 server (SeaweedFS): the BlobStore contract, as LocalBlobStore keeps it, plus
what S3 adds — multipart uploads that stay invisible until commit, uploads abandoned by a crash, the
download cache.

Each test works under a prefix of its own in the session's bucket; `bucket_state` looks into the bucket
behind the store's back (every object under the prefix, staging included, and pending multipart uploads).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from openft.storage import (
    BlobStore,
    BlobTooLarge,
    LocalBlobStore,
    S3BlobStore,
    StorageUnavailable,
    StoredBlob,
    open_blob_store,
)
from openft.storage.s3 import PART_BYTES
from tests.support.seaweedfs import SeaweedFS, free_port_for_nothing

MiB = 1024 * 1024


def new_store(seaweedfs: SeaweedFS, tmp_path: Path, **options: Any) -> S3BlobStore:
    prefix = options.pop("prefix", f"t-{uuid.uuid4().hex[:10]}/blobs")
    return S3BlobStore(
        seaweedfs.bucket, prefix, endpoint_url=seaweedfs.endpoint_url, cache_dir=tmp_path / "cache", **options
    )


@pytest.fixture
def s3(seaweedfs: SeaweedFS, tmp_path: Path) -> S3BlobStore:
    return new_store(seaweedfs, tmp_path)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """The contract tests run on both stores."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return new_store(request.getfixturevalue("seaweedfs"), tmp_path)


def bucket_state(store: S3BlobStore) -> tuple[list[str], list[str]]:
    """(every object key under the store's prefix, the keys of its pending multipart uploads), relative."""
    prefix = store.prefix + "/"
    objects = [
        item["Key"][len(prefix) :]
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=prefix)
        for item in page.get("Contents", [])
    ]
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=prefix).get("Uploads", [])
    return sorted(objects), sorted(upload["Key"][len(prefix) :] for upload in uploads)


def write_blob(store: BlobStore, key: str, data: bytes) -> StoredBlob:
    with store.writer() as writer:
        writer.write(data)
        return writer.commit(key)


# the contract, on both stores -------------------------------------------------------------------------
def test_both_stores_satisfy_the_protocol(store: BlobStore) -> None:
    assert isinstance(store, LocalBlobStore | S3BlobStore)


def test_commit_reports_size_and_sha256_and_content_is_readable(store: BlobStore) -> None:
    parts = [b"hello ", b"world", b"\x00" * 1000]
    with store.writer() as writer:
        for part in parts:
            writer.write(part)
        assert writer.size == sum(map(len, parts))
        assert not store.exists("file-abc")
        assert list(store.keys_older_than(-60)) == []
        blob = writer.commit("file-abc")
    data = b"".join(parts)
    assert blob == StoredBlob(key="file-abc", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert store.exists("file-abc") and store.size("file-abc") == len(data)
    assert b"".join(store.iter_chunks("file-abc")) == data
    assert store.local_path("file-abc").read_bytes() == data
    assert list(store.keys_older_than(-60)) == ["file-abc"]
    assert list(store.keys_older_than(3600)) == []


def test_limit_allows_exactly_max_bytes_and_refuses_one_more(store: BlobStore) -> None:
    with store.writer(max_bytes=10) as writer:
        writer.write(b"12345")
        writer.write(b"67890")
        with pytest.raises(BlobTooLarge) as info:
            writer.write(b"x")
        assert info.value.limit == 10 and writer.size == 10  # the refused write stored nothing
        assert writer.commit("file-ten").size == 10
    assert b"".join(store.iter_chunks("file-ten")) == b"1234567890"


def test_missing_blob_is_file_not_found_before_streaming(store: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.iter_chunks("file-missing")
    with pytest.raises(FileNotFoundError):
        store.size("file-missing")
    with pytest.raises(FileNotFoundError):
        store.snapshot_to("file-missing", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not store.exists("file-missing")
    assert not store.local_path("file-missing").is_file()
    store.delete("file-missing")  # not an error


def test_snapshot_outlives_delete_and_replacement(store: BlobStore, tmp_path: Path) -> None:
    write_blob(store, "file-train", b"training data")
    dest = tmp_path / "jobs" / "ftjob-1" / "train.jsonl"
    store.snapshot_to("file-train", dest)
    write_blob(store, "file-train", b"replaced")
    assert dest.read_bytes() == b"training data"
    store.delete("file-train")
    assert not store.exists("file-train")
    assert dest.read_bytes() == b"training data"
    assert [p.name for p in dest.parent.iterdir()] == ["train.jsonl"]  # no temp left beside it


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/b", "", ".hidden", ".openft-staging", "a b", "x" * 201])
def test_invalid_keys_are_rejected_everywhere(store: BlobStore, tmp_path: Path, key: str) -> None:
    source = tmp_path / "src"
    source.write_bytes(b"data")
    writer = store.writer()
    writer.write(b"data")
    with pytest.raises(ValueError, match="invalid blob key"):
        writer.commit(key)
    writer.abort()
    for call in (
        lambda: store.put_file(key, source),
        lambda: store.local_path(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.iter_chunks(key),
        lambda: store.snapshot_to(key, tmp_path / "dest"),
    ):
        with pytest.raises(ValueError, match="invalid blob key"):
            call()
    assert list(store.keys_older_than(-60)) == []


# S3: visibility, abort, size ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["one-put", "multipart"])
def test_blob_is_invisible_until_commit(s3: S3BlobStore, size: int) -> None:
    data = os.urandom(size)
    writer = s3.writer()
    writer.write(data)
    assert not s3.exists("file-x")
    assert list(s3.keys_older_than(-60)) == []
    objects, uploads = bucket_state(s3)
    assert objects == []  # parts uploaded so far are no object
    assert len(uploads) == (1 if size > PART_BYTES else 0)
    blob = writer.commit("file-x")
    assert blob.sha256 == hashlib.sha256(data).hexdigest() and blob.size == size
    assert bucket_state(s3) == (["file-x"], [])  # no staging object, no upload left
    assert s3.size("file-x") == size


@pytest.mark.parametrize("size", [1000, 9 * MiB], ids=["buffered", "multipart"])
def test_abort_leaves_no_object_and_no_pending_upload(s3: S3BlobStore, size: int) -> None:
    writer = s3.writer()
    writer.write(os.urandom(size))
    writer.abort()
    writer.abort()
    assert bucket_state(s3) == ([], [])
    with pytest.raises(ValueError, match="already committed or aborted"):
        writer.write(b"more")
    with pytest.raises(RuntimeError), s3.writer() as failing:
        failing.write(os.urandom(9 * MiB))
        raise RuntimeError("client went away")
    assert bucket_state(s3) == ([], [])


def test_abort_after_commit_keeps_the_blob(s3: S3BlobStore) -> None:
    writer = s3.writer()
    writer.write(b"data")
    writer.commit("file-1")
    writer.abort()
    assert b"".join(s3.iter_chunks("file-1")) == b"data"
    with pytest.raises(ValueError):
        writer.commit("file-2")


def test_too_large_past_a_part_stores_nothing(s3: S3BlobStore) -> None:
    limit = 10 * MiB
    with s3.writer(max_bytes=limit) as writer:
        writer.write(os.urandom(9 * MiB))  # one part is uploaded already
        with pytest.raises(BlobTooLarge) as info:
            writer.write(os.urandom(2 * MiB))
        assert info.value.limit == limit and writer.size == 9 * MiB
    assert bucket_state(s3) == ([], [])


def test_twenty_mib_round_trip_streams_in_parts(s3: S3BlobStore, tmp_path: Path) -> None:
    """Written in uneven chunks (a part boundary falls inside a write), read back in 1 MiB chunks."""
    data = os.urandom(20 * MiB + 123)
    with s3.writer() as writer:
        for start in range(0, len(data), 3 * MiB + 7):
            writer.write(data[start : start + 3 * MiB + 7])
        blob = writer.commit("file-big")
    assert blob.sha256 == hashlib.sha256(data).hexdigest()
    digest, sizes = hashlib.sha256(), []
    for chunk in s3.iter_chunks("file-big", chunk_size=MiB):
        digest.update(chunk)
        sizes.append(len(chunk))
    assert digest.hexdigest() == blob.sha256
    assert max(sizes) <= MiB and sum(sizes) == len(data)  # streamed, never one big read
    source = tmp_path / "results.bin"
    source.write_bytes(data)
    assert s3.put_file("file-put", source) == StoredBlob("file-put", len(data), blob.sha256)
    assert bucket_state(s3) == (["file-big", "file-put"], [])
    dest = tmp_path / "snap"
    s3.snapshot_to("file-put", dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == blob.sha256


def test_writer_holds_at_most_one_part(s3: S3BlobStore) -> None:
    with s3.writer() as writer:
        for _ in range(3):
            writer.write(os.urandom(5 * MiB))
            assert len(writer._buffer) < PART_BYTES
        writer.commit("file-15")
    assert s3.size("file-15") == 15 * MiB


# S3: the download cache --------------------------------------------------------------------------------
def test_local_path_cache_is_bounded_and_keeps_what_it_returns(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    store = new_store(seaweedfs, tmp_path, cache_bytes=3 * MiB)
    blobs = {f"file-{i}": os.urandom(MiB + MiB // 2) for i in range(3)}
    for key, data in blobs.items():
        write_blob(store, key, data)
    paths = {}
    for key in blobs:
        paths[key] = store.local_path(key)
        assert paths[key].read_bytes() == blobs[key]
        time.sleep(0.01)
    cached = [p for p in store.cache_dir.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in cached) <= 3 * MiB
    assert not paths["file-0"].exists()  # least recently used went first
    assert paths["file-1"].exists() and paths["file-2"].exists()
    assert store.local_path("file-1") == paths["file-1"]  # a hit: no second download
    big = os.urandom(4 * MiB)  # larger than the whole cache: still returned, alone in it
    write_blob(store, "file-big", big)
    path = store.local_path("file-big")
    assert path.read_bytes() == big
    assert [p.name for p in store.cache_dir.iterdir()] == [path.name]


def test_local_path_sees_a_replaced_blob_and_delete_drops_the_copy(s3: S3BlobStore) -> None:
    write_blob(s3, "file-1", b"old")
    old = s3.local_path("file-1")
    write_blob(s3, "file-1", b"new content")
    new = s3.local_path("file-1")
    assert new.read_bytes() == b"new content" and not old.exists()
    s3.delete("file-1")
    assert list(s3.cache_dir.iterdir()) == []
    assert not s3.local_path("file-1").exists()


# S3: abandoned uploads ---------------------------------------------------------------------------------
_CRASHING_WRITER = """
import os, sys
from pathlib import Path
from openft.storage import S3BlobStore
store = S3BlobStore(sys.argv[1], sys.argv[2], endpoint_url=sys.argv[3], cache_dir=Path(sys.argv[4]))
writer = store.writer()
writer.write(os.urandom(9 * 1024 * 1024))  # one part uploaded: a multipart upload is pending
print("writing", flush=True)
import time; time.sleep(600)
"""


def _killed_mid_upload(store: S3BlobStore, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    args = [store.bucket, store.prefix, seaweedfs.endpoint_url, str(tmp_path / "other-cache")]
    process = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "writing"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def test_uploads_abandoned_by_a_crash_are_removed_once_stale(
    s3: S3BlobStore, seaweedfs: SeaweedFS, tmp_path: Path
) -> None:
    _killed_mid_upload(s3, seaweedfs, tmp_path)
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/.openft-staging/left", Body=b"completed, never copied")
    objects, uploads = bucket_state(s3)
    assert objects == [".openft-staging/left"] and len(uploads) == 1
    live = s3.writer()
    live.write(os.urandom(9 * MiB))  # an upload in progress, ours
    reopened = new_store(seaweedfs, tmp_path, prefix=s3.prefix)  # opening sweeps only what is an hour old
    assert bucket_state(reopened)[1] != [] and len(bucket_state(reopened)[1]) == 2
    # S3 servers report times to the second (SeaweedFS truncates them), so a part sent just now can read up to
    # a second old: the stale ones are 2.2 s old, the live part is fresher than the 2 s cutoff by over a second.
    time.sleep(2.2)
    live.write(os.urandom(9 * MiB))  # a new part: this upload is alive
    cleaned = reopened.abort_stale_uploads(older_than=2)
    assert len(cleaned) == 2 and f"{s3.prefix}/.openft-staging/left" in cleaned
    assert len(bucket_state(s3)[1]) == 1  # only the live one is left
    assert live.commit("file-live").size == 18 * MiB
    assert bucket_state(s3) == (["file-live"], [])


def test_keys_older_than_lists_committed_blobs_only(s3: S3BlobStore) -> None:
    write_blob(s3, "file-a", b"a")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/.openft-staging/x", Body=b"x")
    s3.client.put_object(Bucket=s3.bucket, Key=f"{s3.prefix}/sub/file-b", Body=b"b")
    pending = s3.writer()
    pending.write(os.urandom(9 * MiB))
    try:
        assert list(s3.keys_older_than(-60)) == ["file-a"]
    finally:
        pending.abort()


# opening a store ---------------------------------------------------------------------------------------
def test_open_blob_store_picks_the_store_from_the_url(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    local = open_blob_store(None, files_dir=tmp_path / "files", cache_dir=tmp_path / "cache")
    assert isinstance(local, LocalBlobStore) and local.root == tmp_path / "files"
    url = f"s3://{seaweedfs.bucket}/some/prefix/"
    endpoint = seaweedfs.endpoint_url
    s3 = open_blob_store(url, files_dir=tmp_path / "files", cache_dir=tmp_path / "c", endpoint_url=endpoint)
    assert isinstance(s3, S3BlobStore) and (s3.bucket, s3.prefix) == (seaweedfs.bucket, "some/prefix")
    for bad in ("gs://bucket", "s3://", "/srv/files", "s3:/bucket"):
        with pytest.raises(ValueError, match="s3://bucket"):
            open_blob_store(bad, files_dir=tmp_path, cache_dir=tmp_path)


def test_unusable_store_fails_at_open_with_the_reason(seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="bucket does not exist"):
        endpoint = seaweedfs.endpoint_url
        open_blob_store("s3://no-such-bucket-here", files_dir=tmp_path, cache_dir=tmp_path, endpoint_url=endpoint)
    dead = f"http://127.0.0.1:{free_port_for_nothing()}"
    with pytest.raises(StorageUnavailable, match="Could not connect"):
        open_blob_store("s3://bucket", files_dir=tmp_path, cache_dir=tmp_path, endpoint_url=dead)
