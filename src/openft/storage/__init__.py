"""Blob storage for uploaded and generated files: the `BlobStore` protocol and its local implementation.

Importing nothing from the web or database layers keeps the store usable from the worker and the CLI.
"""

from openft.storage.base import BlobStore, BlobTooLarge, BlobWriter, StoredBlob, validate_key
from openft.storage.local import LocalBlobStore, LocalBlobWriter

__all__ = [
    "BlobStore",
    "BlobTooLarge",
    "BlobWriter",
    "LocalBlobStore",
    "LocalBlobWriter",
    "StoredBlob",
    "validate_key",
]
