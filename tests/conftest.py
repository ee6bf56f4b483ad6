"""Shared fixtures: the tiny model (built once per session) and database URLs for both backends."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from openft.services.container import Container, build_container
from openft.settings import Settings
from tests.support.databases import postgres_available, postgres_schema_url, sqlite_url
from tests.support.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
TINY_MODEL_NAME = "tiny-llama"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding one base model, `tiny-llama` (2 layers, hidden 64, ChatML)."""
    root = tmp_path_factory.mktemp("models")
    build_tiny_model(root / TINY_MODEL_NAME)
    return root


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests run on SQLite and on the local PostgreSQL server."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at OPENFT_TEST_POSTGRES_URL")
    with postgres_schema_url() as url:
        yield url


@pytest.fixture
def container(tmp_path: Path, models_dir: Path) -> Iterator[Container]:
    """A wired container on a temporary data folder (SQLite); its worker is built but not started."""
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key="k", lease_seconds=0.2)
    built = build_container(settings, with_worker=True)
    yield built
    built.engine.dispose()
