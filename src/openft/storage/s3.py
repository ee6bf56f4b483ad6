"""Blob store on any S3-compatible object store (AWS S3, MinIO, SeaweedFS, Ceph…) through boto3.

Blobs are objects at `<prefix>/<key>` in one bucket. The store keeps `base.py`'s durability rule with what S3
offers (docs/object-storage.md has the whole story):

- An object appears only when the request that writes it completes: a `put_object`, or the completion of a
  multipart upload. Parts uploaded so far are never listed, read or counted as the object.
- A writer does not know its blob's key until `commit(key)`, and S3 cannot rename. A blob up to one part
  (PART_BYTES) is held in the writer's one part buffer and `put_object`-ed under its key at commit. A larger
  one streams into a multipart upload of a staging object (`<prefix>/.openft-staging/<id>`, a name no
  blob key can have); commit completes it and copies it server-side to its key (no bytes through this
  process), then deletes the staging object. `put_file` knows its key up front and uploads straight to it.
- At most one part buffer per writer is in memory, whatever the blob's size.
- Abandoned multipart uploads and staging objects (a process killed mid-upload) are removed by
  `abort_stale_uploads`, which the store runs when it is opened, like LocalBlobStore removes stale temp files.
- `local_path` and `snapshot_to` download; `local_path` keeps a bounded cache on this machine.

boto3 is imported lazily: the default (local) store never needs it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from openft.fsutil import atomic_open, ensure_dir
from openft.storage.base import BlobTooLarge, StoredBlob, validate_key
from openft.storage.folders import FolderMirror

MiB = 1024 * 1024
PART_BYTES = 8 * MiB
"""Multipart part size: above S3's 5 MiB minimum for every part but the last, and small enough that the one
buffer a writer holds stays modest. 10,000 parts (S3's maximum) bound one blob at ~78 GiB."""
MAX_PARTS = 10_000
STAGING = ".openft-staging"
"""Folder (under the prefix) of staging objects; starts with a dot, so `validate_key` never accepts it."""
STALE_UPLOAD_SECONDS = 3600
"""A multipart upload (or staging object) untouched this long is taken as abandoned by a crashed process."""
DEFAULT_CACHE_BYTES = 10 * 1024 * MiB
"""`local_path`'s cache bound when the caller sets none."""
_COPY_CHUNK = MiB


class StorageUnavailable(RuntimeError):
    """The configured store cannot be used (unknown bucket, no credentials, endpoint unreachable)."""


def _module(name: str) -> Any:
    """A boto3/botocore module, imported on first use and typed `Any`: they ship no type information (the
    generated stubs are a separate package this project does not install), and an untyped `import` would need
    a mypy override or an ignore comment."""
    return importlib.import_module(name)


def _is_missing(exc: Exception) -> bool:
    if not isinstance(exc, _module("botocore.exceptions").ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def make_client(endpoint_url: str | None) -> Any:
    """A thread-safe boto3 S3 client (typed `Any`, see `_module`).

    `AWS_EC2_METADATA_DISABLED=true` is set unless the environment already says otherwise: without it boto3,
    finding no credentials elsewhere, probes the EC2 metadata address (169.254.169.254) with a timeout on
    every start, which delays startup by seconds and sends requests off the machine where no EC2 exists.
    Operators on EC2 who use an instance role set `AWS_EC2_METADATA_DISABLED=false` explicitly.
    """
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    session = _module("boto3.session").Session()
    config = _module("botocore.config").Config(
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
        # path-style URLs: MinIO, SeaweedFS and Ceph serve buckets under one host name
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    return session.client(
        "s3", endpoint_url=endpoint_url, region_name=session.region_name or "us-east-1", config=config
    )


class S3BlobWriter:
    """Streams bytes into one part buffer and, past one part, into a multipart upload; hashes as it goes.

    `target` is the object key when the caller knows it up front (`put_file`); otherwise larger blobs go to a
    staging object that `commit` copies to the final key.
    """

    def __init__(self, store: S3BlobStore, max_bytes: int | None, *, target: str | None = None):
        self._store = store
        self._client = store.client
        self._bucket = store.bucket
        self._max_bytes = max_bytes
        self._target = target
        self._upload_key = target or store.object_key(f"{STAGING}/{uuid.uuid4().hex}", check=False)
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._buffer = bytearray()
        self._sha256 = hashlib.sha256()
        self._open = True
        self._committed = False
        self.size = 0

    def write(self, data: bytes) -> None:
        if not self._open:
            raise ValueError("blob writer is already committed or aborted")
        if self._max_bytes is not None and self.size + len(data) > self._max_bytes:
            raise BlobTooLarge(self._max_bytes)
        self._sha256.update(data)
        self.size += len(data)
        view = memoryview(data)
        while view:
            room = PART_BYTES - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) >= PART_BYTES:
                self._upload_part()

    def _upload_part(self) -> None:
        if self._upload_id is None:  # created lazily: a small blob never starts a multipart upload
            self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._upload_key)[
                "UploadId"
            ]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"blob larger than S3's {MAX_PARTS} parts of {PART_BYTES} bytes")
        response = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._upload_key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._buffer.clear()

    def commit(self, key: str) -> StoredBlob:
        return self.commit_object(self._store.object_key(key), key)

    def commit_object(self, final: str, key: str | None = None) -> StoredBlob:
        """Make the content visible as the object `final` (any object key; `commit` passes a blob's) and
        return it as a StoredBlob named `key` (default: `final`)."""
        if not self._open:
            raise ValueError("blob writer is already committed or aborted")
        if self._target is not None and final != self._target:
            raise ValueError(f"this writer uploads to {self._target!r}, not {final!r}")
        try:
            if self._upload_id is None:  # one part at most: a single atomic put under the final key
                self._client.put_object(Bucket=self._bucket, Key=final, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._upload_part()
                self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._upload_key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None  # completed: nothing left to abort
                if self._upload_key != final:
                    try:
                        self._store.copy_object(self._upload_key, final)
                    finally:
                        self._client.delete_object(Bucket=self._bucket, Key=self._upload_key)
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._committed = True
        self._buffer = bytearray()
        return StoredBlob(key=final if key is None else key, size=self.size, sha256=self._sha256.hexdigest())

    def abort(self) -> None:
        self._open = False
        self._buffer = bytearray()
        if self._upload_id is not None and not self._committed:
            upload_id, self._upload_id = self._upload_id, None
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._upload_key, UploadId=upload_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()


class S3BlobStore:
    """A `BlobStore` in `bucket` under `prefix`, with a bounded download cache in `cache_dir`.

    Opening it checks the bucket (StorageUnavailable with the reason if it cannot be used) and removes
    multipart uploads and staging objects abandoned more than `stale_upload_seconds` ago.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        cache_dir: Path,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        client: Any = None,
        stale_upload_seconds: float | None = STALE_UPLOAD_SECONDS,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.cache_dir = cache_dir
        self.cache_bytes = cache_bytes
        self.client = client if client is not None else make_client(endpoint_url)
        self._cache_lock = threading.Lock()
        self._check_bucket()
        ensure_dir(cache_dir)
        if stale_upload_seconds is not None:
            self.abort_stale_uploads(stale_upload_seconds)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _check_bucket(self) -> None:
        exceptions = _module("botocore.exceptions")
        where = f"{self.url} (endpoint {self.endpoint_url or 'AWS'})"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            reason = {
                "404": "the bucket does not exist",
                "NoSuchBucket": "the bucket does not exist",
                "403": "access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the role)",
            }.get(str(code), str(exc))
            raise StorageUnavailable(f"cannot use the blob store {where}: {reason}") from None
        except exceptions.BotoCoreError as exc:  # no credentials, endpoint unreachable, bad URL
            raise StorageUnavailable(f"cannot use the blob store {where}: {exc}") from None

    def object_key(self, key: str, *, check: bool = True) -> str:
        """The object's key in the bucket: `<prefix>/<key>` (the blob key validated first)."""
        if check:
            validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _list_prefix(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    # writing ---------------------------------------------------------------------------------------
    def writer(self, max_bytes: int | None = None) -> S3BlobWriter:
        return S3BlobWriter(self, max_bytes)

    def put_file(self, key: str, source: Path) -> StoredBlob:
        """Multipart straight to the final key (it is known here), one part in memory at a time."""
        with S3BlobWriter(self, None, target=self.object_key(key)) as writer, open(source, "rb") as handle:
            while chunk := handle.read(PART_BYTES):
                writer.write(chunk)
            return writer.commit(key)

    def copy_object(self, source_key: str, dest_key: str) -> None:
        """Server-side copy (bytes never pass through this process); a multipart copy above 5 GiB, S3's
        limit for one CopyObject."""
        config = _module("boto3.s3.transfer").TransferConfig(
            multipart_threshold=5 * 1024 * MiB, multipart_chunksize=512 * MiB, max_concurrency=4
        )
        self.client.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, dest_key, Config=config)

    # reading ---------------------------------------------------------------------------------------
    def _get(self, key: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no blob {key!r} in {self.url}") from None
            raise
        return response

    def _head(self, key: str) -> dict[str, Any]:
        try:
            response: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except Exception as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"no blob {key!r} in {self.url}") from None
            raise
        return response

    def iter_chunks(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        # The GET is sent now, not on first iteration: a missing blob raises FileNotFoundError before a
        # response starts streaming; the body is then read chunk by chunk, never whole.
        body = self._get(key)["Body"]
        return _read_body(body, chunk_size)

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))  # S3: deleting nothing is fine
        for cached in self.cache_dir.glob(f"{validate_key(key)}@*"):
            cached.unlink(missing_ok=True)

    def keys_older_than(self, seconds: float) -> Iterator[str]:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
        prefix = self._list_prefix()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("Contents", []):
                name = item["Key"][len(prefix) :]
                try:
                    validate_key(name)
                except ValueError:
                    continue
                if item["LastModified"] < cutoff:
                    yield name

    # local copies ----------------------------------------------------------------------------------
    def snapshot_to(self, key: str, dest: Path) -> None:
        """Download the blob to a temp sibling of `dest`, fsync, rename: `dest` is a copy of its own."""
        body = self._get(key)["Body"]  # FileNotFoundError before `dest` or a temp file is created
        with body, atomic_open(dest) as out:
            while chunk := body.read(_COPY_CHUNK):
                out.write(chunk)

    def local_path(self, key: str) -> Path:
        """The blob downloaded into the cache (once per content: cache files are named by key and ETag).

        A missing blob gives a path where no file is, as LocalBlobStore does (callers check `is_file()`).
        The file returned is the most recently used one, so eviction takes it last; the bound can be
        exceeded while a single blob is larger than it.
        """
        validate_key(key)
        try:
            head = self._head(key)
        except FileNotFoundError:
            return self.cache_dir / key
        etag = "".join(c for c in str(head.get("ETag", "")) if c.isalnum() or c == "-")[:80] or "noetag"
        path = self.cache_dir / f"{key}@{etag}"
        if path.is_file():
            os.utime(path)  # most recently used
            return path
        try:
            self.snapshot_to(key, path)  # temp sibling, fsync, rename: a cache file is whole or absent
        except FileNotFoundError:
            return self.cache_dir / key  # deleted between the HEAD and the GET
        for older in self.cache_dir.glob(f"{key}@*"):  # an earlier content of a replaced key
            if older != path:
                older.unlink(missing_ok=True)
        self._evict(keep=path)
        return path

    def _evict(self, keep: Path) -> None:
        """Remove least recently used cache files until the cache fits `cache_bytes`, never `keep`; also
        temp files of downloads that died (untouched for STALE_UPLOAD_SECONDS)."""
        with self._cache_lock:
            entries: list[tuple[float, int, Path]] = []
            stale_before = time.time() - STALE_UPLOAD_SECONDS
            for entry in self.cache_dir.iterdir():
                try:
                    stat = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.startswith(".tmp-"):
                    if stat.st_mtime < stale_before:
                        entry.unlink(missing_ok=True)
                    continue
                if entry.is_file():
                    entries.append((max(stat.st_atime, stat.st_mtime), stat.st_size, entry))
            total = sum(size for _, size, _ in entries)
            for _, size, entry in sorted(entries, key=lambda item: item[0]):
                if total <= self.cache_bytes:
                    break
                if entry == keep:
                    continue
                entry.unlink(missing_ok=True)
                total -= size

    def folders(self, namespace: str) -> FolderMirror:
        """Whole folders (job artefacts) under `<prefix>/<namespace>/`, beside the blobs (storage/folders.py).
        The orphan sweep never sees them: `keys_older_than` lists only the prefix's direct children."""
        return FolderMirror(self, namespace)

    # housekeeping ----------------------------------------------------------------------------------
    def abort_stale_uploads(self, older_than: float = STALE_UPLOAD_SECONDS) -> list[str]:
        """Abort multipart uploads under the prefix whose newest part (or start, without parts) is older than
        `older_than` seconds, and delete staging objects as old (a crash between completing one and copying
        it); return the object keys cleaned. An upload in progress adds a part every PART_BYTES, so it is
        never taken for abandoned unless its client stalls that long."""
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=older_than)
        prefix = self._list_prefix()
        cleaned: list[str] = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] >= cutoff:
                    continue
                parts = self.client.list_parts(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                if any(part["LastModified"] >= cutoff for part in parts.get("Parts", [])):
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except Exception as exc:
                    if not _is_missing(exc) and "NoSuchUpload" not in str(exc):
                        raise
                cleaned.append(upload["Key"])
        staging = f"{prefix}{STAGING}/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=staging):
            for item in page.get("Contents", []):
                if item["LastModified"] < cutoff:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    cleaned.append(item["Key"])
        return cleaned


def _read_body(body: Any, chunk_size: int) -> Iterator[bytes]:
    with body:
        while chunk := body.read(chunk_size):
            yield chunk


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` → (bucket, prefix); ValueError for anything else."""
    if not url.startswith("s3://"):
        raise ValueError(f"unsupported storage URL {url!r}: use s3://bucket[/prefix] (or leave it unset)")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"storage URL {url!r} names no bucket: use s3://bucket[/prefix]")
    return bucket, prefix.strip("/")
