"""Client-command fixtures: one real server per module (tiny model, loopback) and a CLI runner pointed at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from openai import OpenAI
from typer.testing import CliRunner

from openft.cli import app
from tests.support.server import RunningServer, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("cli-server"), models_dir)
    yield running
    running.stop()


@pytest.fixture
def sdk(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


@dataclass
class Cli:
    """`openft …` in-process, with OPENFT_BASE_URL / OPENFT_API_KEY set for the test server."""

    env: dict[str, str]

    def __call__(self, *args: str, code: int | None = 0, input: str | None = None) -> Result:
        result = CliRunner().invoke(app, list(args), env=self.env, input=input)
        if code is not None:
            assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        import json

        return json.loads(self(*args, "--json", code=code).stdout)


@pytest.fixture
def cli(server: RunningServer, tmp_path: Path) -> Cli:
    # OPENFT_DATA_DIR points at an empty folder, so no key is found there by accident
    return Cli({"OPENFT_BASE_URL": server.url, "OPENFT_API_KEY": server.api_key, "OPENFT_DATA_DIR": str(tmp_path)})


@pytest.fixture
def make_cli() -> Callable[[dict[str, str]], Cli]:
    return Cli
