"""The server's and the worker process's store come from OPENFT_STORAGE_URL; a bucket that cannot be used stops
either at start, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from openft.services.container import build_container
from openft.services.workers import build_worker_process
from openft.settings import Settings
from openft.storage import LocalBlobStore, S3BlobStore, StorageUnavailable
from tests.support.seaweedfs import SeaweedFS


def settings_for(tmp_path: Path, models_dir: Path, storage_url: str | None, endpoint: str | None) -> Settings:
    options = {"storage_url": storage_url, "s3_endpoint_url": endpoint}
    return Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key="k", **options)


def test_server_and_worker_use_the_bucket(seaweedfs: SeaweedFS, tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, f"s3://{seaweedfs.bucket}/wired", seaweedfs.endpoint_url)
    container = build_container(settings, with_worker=False)
    try:
        assert isinstance(container.store, S3BlobStore)
        assert (container.store.bucket, container.store.prefix) == (seaweedfs.bucket, "wired")
        assert container.store.cache_dir == settings.cache_dir / "blobs"
    finally:
        container.close()
    worker = build_worker_process(settings)
    worker.engine.dispose()


def test_default_is_the_data_folder(tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, None, None)
    container = build_container(settings, with_worker=False)
    try:
        assert isinstance(container.store, LocalBlobStore) and container.store.root == settings.files_dir
    finally:
        container.close()


def test_an_unusable_bucket_stops_server_and_worker(seaweedfs: SeaweedFS, tmp_path: Path, models_dir: Path) -> None:
    settings = settings_for(tmp_path, models_dir, "s3://missing-bucket", seaweedfs.endpoint_url)
    with pytest.raises(StorageUnavailable, match="bucket does not exist"):
        build_container(settings, with_worker=False)
    with pytest.raises(StorageUnavailable, match="bucket does not exist"):
        build_worker_process(settings)
