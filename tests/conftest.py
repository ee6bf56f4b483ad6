"""Shared fixtures: the tiny model (built once per session, i.e. once per xdist worker) and database URLs for
both backends; and the order in which a parallel run hands out the test files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from openft.jobs.job_file import usable_cpus
from openft.services.container import Container, build_container
from openft.settings import Settings
from tests.support.databases import postgres_available, postgres_schema_url, sqlite_url
from tests.support.tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # A parallel run (`make test`): the workers share the cores, as a worker's jobs do (jobs/job_file.py
    # train_threads). Without this every trainer and in-process model takes a thread per core, and the
    # oversubscribed torch threads make the training tests several times slower (README: Configuration).
    _share = str(max(1, usable_cpus() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OPENFT_TRAIN_THREADS", _share)  # trainers started by servers and workers
    os.environ.setdefault("OMP_NUM_THREADS", _share)  # torch in the servers and workers the tests start
    torch.set_num_threads(int(os.environ["OPENFT_TRAIN_THREADS"]))  # and in this process
TINY_MODEL_NAME = "tiny-llama"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In a parallel run (`make test`: pytest-xdist, one file per worker at a time), start the files that hold
    a `slow` test first, so the run does not end with one worker alone on the chaos test.

    Whole files move, in their own order, so module-scoped servers still start once per file. xdist hands out
    files in this order because the workers collect and `--no-loadscope-reorder` is set (pyproject.toml);
    a serial run keeps pytest's order, which gives the fast tests' failures first.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group is kept


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
