"""Blob storage for uploaded and generated files: the `BlobStore` protocol, its local implementation and its
S3 one, and `open_blob_store`, which picks one from the storage URL.

Importing nothing from the web or database layers (nor the settings) keeps the store usable from the worker
and the CLI; boto3 is imported only when an S3 store is opened.
"""

from __future__ import annotations

from pathlib import Path

from openft.storage.base import BlobStore, BlobTooLarge, BlobWriter, StoredBlob, validate_key
from openft.storage.folders import FolderMirror
from openft.storage.local import LocalBlobStore, LocalBlobWriter
from openft.storage.s3 import DEFAULT_CACHE_BYTES, S3BlobStore, S3BlobWriter, StorageUnavailable, parse_s3_url


def open_blob_store(
    storage_url: str | None,
    *,
    files_dir: Path,
    cache_dir: Path,
    endpoint_url: str | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> LocalBlobStore | S3BlobStore:
    """The store `storage_url` names: None → the folder `files_dir`; `s3://bucket[/prefix]` → that bucket, with
    `local_path`'s downloads cached in `cache_dir`.

    ValueError for any other URL; StorageUnavailable (with the reason) when the bucket cannot be used, so a
    misconfigured server fails at start, not in its first request.
    """
    if storage_url is None or storage_url == "":
        return LocalBlobStore(files_dir)
    bucket, prefix = parse_s3_url(storage_url)
    return S3BlobStore(bucket, prefix, endpoint_url=endpoint_url, cache_dir=cache_dir, cache_bytes=cache_bytes)


def folder_mirror(store: BlobStore, namespace: str) -> FolderMirror | None:
    """Whole folders (job artefacts) beside `store`'s blobs when it is an object store; None for the data
    folder, whose job folders are where the artefacts live already."""
    return store.folders(namespace) if isinstance(store, S3BlobStore) else None


__all__ = [
    "BlobStore",
    "BlobTooLarge",
    "BlobWriter",
    "FolderMirror",
    "LocalBlobStore",
    "LocalBlobWriter",
    "S3BlobStore",
    "S3BlobWriter",
    "StorageUnavailable",
    "StoredBlob",
    "folder_mirror",
    "open_blob_store",
    "validate_key",
]
