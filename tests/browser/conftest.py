"""Browser fixtures: one real server per module, Debian's chromium driven by Playwright, screenshots.

Playwright's own browser download does not work here (no network), so the system chromium is launched
by path; `make setup` installs it when it can. Without one the tests skip and say so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openai import OpenAI

from tests.support.server import RunningServer, start_server

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"


def chromium_path() -> str | None:
    """`OPENFT_TEST_CHROMIUM`, else the first Chromium-family browser on PATH (Debian names it `chromium`;
    Google Chrome, preinstalled on some CI images, speaks the same protocol)."""
    explicit = os.environ.get("OPENFT_TEST_CHROMIUM")
    if explicit:
        return explicit
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium executable: `apt-get install chromium` (make setup tries) or set OPENFT_TEST_CHROMIUM")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[dev])")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where chromium refuses its sandbox
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server-data"), models_dir)
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture
def page(browser: Browser, server: RunningServer) -> Iterator[Page]:
    """A fresh browser profile (empty localStorage) per test; fails the test on any script error or
    Content-Security-Policy violation the page reports."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=server.url)
    opened = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"CSP violation: {message.text}")

    opened.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    opened.on("console", on_console)
    yield opened
    context.close()
    assert not problems, problems


@pytest.fixture
def screenshot(page: Page) -> Callable[[str], Path]:
    """Save the page as test-output/browser/NAME.png (full height) and return the path."""

    def save(name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return save
