"""A data folder is bound to one database: another (or an empty) database refuses to open it, and nothing
is swept. The attack this guards against: `openft export` run without `OPENFT_DATABASE_URL` next to a
PostgreSQL deployment opened a new SQLite database in the folder and deleted every stored file older than
an hour, since no row of that database pointed to them."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from openft.cli import app
from openft.services.container import build_container, load_or_create_api_key
from openft.services.data_folder import IDENTITY_FILE, DataFolderMismatch
from openft.services.workers import build_worker_process
from openft.settings import Settings
from tests.support.databases import postgres_available, postgres_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def deployment_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The deployment's real database: a SQLite file outside the data folder, or a PostgreSQL schema."""
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        yield f"sqlite:///{tmp_path / 'db' / 'deployment.db'}"
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable at OPENFT_TEST_POSTGRES_URL")
    with postgres_schema_url() as url:
        yield url


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _deployment_with_an_old_file(data_dir: Path, url: str) -> Path:
    """A deployment on `url` that stored one file three hours ago; the file's blob."""
    settings = Settings(data_dir=data_dir, database_url=url, api_key="k")
    container = build_container(settings, with_worker=False)
    writer = container.store.writer()
    writer.write(b'{"messages": []}\n')
    file_id = container.files.create(
        container.default_org_id, purpose="fine-tune", filename="t.jsonl", writer=writer
    ).id
    blob = container.store.local_path(file_id)
    _age(blob, 3 * 3600)
    container.start()
    container.close()
    return blob


def test_another_database_refuses_the_folder_and_sweeps_nothing(tmp_path: Path, deployment_url: str) -> None:
    data_dir = tmp_path / "data"
    blob = _deployment_with_an_old_file(data_dir, deployment_url)
    recorded = json.loads((data_dir / IDENTITY_FILE).read_text())
    assert recorded["database_id"].startswith("db-")

    # the mistake: the folder without OPENFT_DATABASE_URL → a new SQLite database inside it
    wrong = Settings(data_dir=data_dir, api_key="k")
    with pytest.raises(DataFolderMismatch) as refused:
        build_container(wrong, with_worker=False)
    message = str(refused.value)
    assert str(data_dir) in message and recorded["database_id"] in message  # names the folder's database
    assert "openft.db" in message and "Nothing was changed" in message  # and the one this process opened
    with pytest.raises(DataFolderMismatch):
        build_worker_process(wrong)
    assert blob.read_bytes() == b'{"messages": []}\n'

    # the right database still opens it, and its server start keeps the file
    right = build_container(Settings(data_dir=data_dir, database_url=deployment_url, api_key="k"), with_worker=False)
    right.start()
    right.close()
    assert blob.exists()


def test_export_with_the_wrong_database_is_one_clear_line(tmp_path: Path, deployment_url: str) -> None:
    data_dir = tmp_path / "data"
    blob = _deployment_with_an_old_file(data_dir, deployment_url)
    env = {"OPENFT_DATA_DIR": str(data_dir), "OPENFT_DATABASE_URL": ""}
    env.pop("OPENFT_DATABASE_URL")
    result = CliRunner().invoke(app, ["export", "some-model", "--out", str(tmp_path / "out")], env=env)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: The data folder ") and result.stderr.count("\n") == 1
    assert blob.exists()


def test_a_folder_from_before_the_binding_is_refused_by_an_empty_database(tmp_path: Path) -> None:
    """No database.json yet (a folder of an older openft): an empty database must not adopt its files."""
    data_dir = tmp_path / "data"
    deployment = f"sqlite:///{tmp_path / 'deployment.db'}"
    blob = _deployment_with_an_old_file(data_dir, deployment)
    (data_dir / IDENTITY_FILE).unlink()

    with pytest.raises(DataFolderMismatch, match="no file or job rows"):
        build_container(Settings(data_dir=data_dir, api_key="k"), with_worker=False)
    assert blob.exists() and not (data_dir / IDENTITY_FILE).exists()

    # its own database binds it again on first use
    build_container(Settings(data_dir=data_dir, database_url=deployment, api_key="k"), with_worker=False).close()
    assert (data_dir / IDENTITY_FILE).exists() and blob.exists()


def test_an_unreadable_identity_file_opens_nothing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_key="k")
    build_container(settings, with_worker=False).close()
    (settings.data_dir / IDENTITY_FILE).write_text("{not json")
    with pytest.raises(DataFolderMismatch, match="cannot be read"):
        build_container(settings, with_worker=False)


def test_a_short_lived_command_never_sweeps(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_key="k")
    container = build_container(settings, with_worker=False)
    writer = container.store.writer()
    writer.write(b"no row points here")
    writer.commit("file-orphan")
    _age(container.store.local_path("file-orphan"), 3 * 3600)
    container.close()

    result = CliRunner().invoke(
        app, ["export", "nope", "--out", str(tmp_path / "out")], env={"OPENFT_DATA_DIR": str(settings.data_dir)}
    )
    assert result.exit_code == 1  # no such model; the point is what it did not do
    assert (settings.files_dir / "file-orphan").exists()


def test_the_key_file_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Created with mode 0600, not created world-readable and chmod-ed after (readable in between)."""
    old_umask = os.umask(0)
    try:

        def no_chmod(*args: object, **kwargs: object) -> None:
            raise AssertionError("the key file must not need a chmod")

        monkeypatch.setattr(os, "chmod", no_chmod)
        settings = Settings(data_dir=tmp_path, api_key=None)
        key, generated = load_or_create_api_key(settings)
    finally:
        os.umask(old_umask)
    assert generated and settings.key_file.read_text().strip() == key
    assert stat.S_IMODE(settings.key_file.stat().st_mode) == 0o600
