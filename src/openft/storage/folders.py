"""Whole folders (a job's model, checkpoints' weights, results) in an S3 bucket, visible only when complete.

A folder `name` is stored as one object per file, `<prefix>/<namespace>/<name>/files/<relative path>`, plus
`<prefix>/<namespace>/<name>/manifest.json`, written **last**, which lists every file with its size and
SHA-256. S3 has no atomic multi-object write, so the manifest is the commit: a folder exists exactly when its
manifest does, a reader (`pull`) takes only the files the manifest names and checks each one's SHA-256, and a
push killed half-way leaves files without a manifest, which no reader trusts (a second push overwrites
them). Deleting removes the manifest first, so a folder disappears at once.

Relative paths are checked component by component with `validate_key` (no `..`, no hidden names, no
separators), on push and again on pull: a manifest is never trusted to name a path outside `dest`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from openft.fsutil import commit_dir, ensure_dir, fsync_dir, temp_sibling
from openft.storage.base import validate_key

if TYPE_CHECKING:
    from openft.storage.s3 import S3BlobStore

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FolderFile:
    path: str
    """Relative, `/`-separated."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    name: str
    files: list[FolderFile]
    created_at: float

    def to_json(self) -> bytes:
        return json.dumps({"version": 1, **asdict(self)}, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        files = [FolderFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in data["files"]]
        return cls(name=str(data["name"]), files=files, created_at=float(data["created_at"]))


def checked_relative(path: str) -> PurePosixPath:
    """`path` as a relative path whose every component is a valid blob key; ValueError otherwise."""
    relative = PurePosixPath(path)
    if relative.is_absolute() or not relative.parts:
        raise ValueError(f"not a relative path: {path!r}")
    for part in relative.parts:
        validate_key(part)
    return relative


class FolderMirror:
    """Folders under `<store prefix>/<namespace>/` of an S3 store (same bucket, client and part size)."""

    def __init__(self, store: S3BlobStore, namespace: str):
        self._store = store
        self._client: Any = store.client
        self._bucket = store.bucket
        self._root = store.object_key(validate_key(namespace)) + "/"

    def _key(self, name: str, relative: str | None = None) -> str:
        base = self._root + validate_key(name) + "/"
        return base + MANIFEST if relative is None else base + "files/" + str(checked_relative(relative))

    def push(self, name: str, folder: Path, include: Callable[[PurePosixPath], bool] = lambda _: True) -> Manifest:
        """Upload every file of `folder` that `include` accepts (hidden files never: temp files), then the
        manifest; objects of an earlier push of `name` that the new manifest does not name are deleted."""
        from openft.storage.s3 import S3BlobWriter

        files: list[FolderFile] = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = PurePosixPath(path.relative_to(folder).as_posix())
            if any(part.startswith(".") for part in relative.parts) or not include(relative):
                continue
            key = self._key(name, str(relative))
            with S3BlobWriter(self._store, None, target=key) as writer, open(path, "rb") as handle:
                while chunk := handle.read(8 * _CHUNK):
                    writer.write(chunk)
                blob = writer.commit_object(key)
            files.append(FolderFile(str(relative), blob.size, blob.sha256))
        manifest = Manifest(name=name, files=files, created_at=time.time())
        self._client.put_object(Bucket=self._bucket, Key=self._key(name), Body=manifest.to_json())
        named = {self._key(name, f.path) for f in files}
        self._delete_objects([key for key in self._list(self._root + name + "/files/") if key not in named])
        return manifest

    def manifest(self, name: str) -> Manifest:
        """The folder's manifest; FileNotFoundError when the folder is not (completely) stored."""
        try:
            body = self._client.get_object(Bucket=self._bucket, Key=self._key(name))["Body"]
        except Exception as exc:
            from openft.storage.s3 import _is_missing

            if _is_missing(exc):
                raise FileNotFoundError(f"no folder {name!r} in {self._store.url}") from None
            raise
        with body:
            return Manifest.from_json(body.read())

    def exists(self, name: str) -> bool:
        try:
            self.manifest(name)
        except FileNotFoundError:
            return False
        return True

    def pull(self, name: str, dest: Path) -> Manifest:
        """Download the folder into `dest` (replacing it) through a temp sibling: `dest` appears complete, with
        every file's size and SHA-256 checked, or not at all."""
        manifest = self.manifest(name)
        ensure_dir(dest.parent)
        tmp = temp_sibling(dest)
        try:
            for item in manifest.files:
                target = tmp.joinpath(*checked_relative(item.path).parts)
                ensure_dir(target.parent)
                digest, size = hashlib.sha256(), 0
                body = self._client.get_object(Bucket=self._bucket, Key=self._key(name, item.path))["Body"]
                with body, open(target, "wb") as out:
                    while chunk := body.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                if size != item.size or digest.hexdigest() != item.sha256:
                    raise OSError(f"{name}/{item.path} in {self._store.url} does not match its manifest")
            ensure_dir(tmp)  # an empty folder is a folder too
            commit_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest

    def restore_missing(self, name: str, dest: Path) -> list[str]:
        """Fill in `dest` from the stored folder without touching what `dest` holds: the folder is pulled
        whole into a temp sibling (checked as `pull` does), and each of its top-level entries that `dest`
        lacks is renamed into `dest`. Returns those entries' names; FileNotFoundError without a manifest."""
        if not dest.exists():
            self.pull(name, dest)
            return sorted(entry.name for entry in dest.iterdir())
        staged = temp_sibling(dest)
        self.pull(name, staged)
        restored = []
        try:
            for entry in sorted(staged.iterdir()):
                if not (dest / entry.name).exists():
                    os.replace(entry, dest / entry.name)
                    restored.append(entry.name)
            fsync_dir(dest)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return restored

    def names(self, starting_with: str) -> list[str]:
        """The names of the stored folders (manifest present) that start with `starting_with`."""
        prefix = self._root + starting_with
        return sorted(
            key[len(self._root) : -len("/" + MANIFEST)]
            for key in self._list(prefix)
            if key.endswith("/" + MANIFEST) and "/" not in key[len(self._root) : -len("/" + MANIFEST)]
        )

    def delete(self, name: str) -> None:
        """Remove the manifest (the folder is gone from then on), then its files."""
        self._client.delete_object(Bucket=self._bucket, Key=self._key(name))
        self._delete_objects(list(self._list(self._root + validate_key(name) + "/files/")))

    def _list(self, prefix: str) -> list[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    def _delete_objects(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True})
