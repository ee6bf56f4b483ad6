"""End-to-end fixtures: one real server per test module, and the official SDK in three dialects."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import AzureOpenAI, OpenAI

from tests.support.seaweedfs import SeaweedFS, SeaweedUnavailable, start_seaweedfs
from tests.support.server import RunningServer, start_server

DIALECTS = ("openai", "azure-v1", "azure-dated")
AZURE_API_VERSION = "2025-04-01-preview"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server-data"), models_dir)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3 server (SeaweedFS on loopback) for the module's object-store tests; skipped where there is none."""
    try:
        running = start_seaweedfs(tmp_path_factory.mktemp("s3"))
    except SeaweedUnavailable as exc:
        pytest.skip(str(exc))
    yield running
    running.stop()


def make_client(server: RunningServer, dialect: str) -> OpenAI:
    """The three ways users point the official SDK at openft (docs/api-compatibility.md §1)."""
    if dialect == "openai":
        return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
    if dialect == "azure-v1":
        return OpenAI(base_url=f"{server.url}/openai/v1/", api_key=server.api_key, max_retries=0)
    return AzureOpenAI(azure_endpoint=server.url, api_key=server.api_key, api_version=AZURE_API_VERSION, max_retries=0)


@pytest.fixture
def client_for(server: RunningServer) -> Callable[[str], OpenAI]:
    return lambda dialect: make_client(server, dialect)


@pytest.fixture
def client(server: RunningServer) -> OpenAI:
    return make_client(server, "openai")
