"""The dashboard's routes without a browser: the page, its static files, the state-machine table, and
that none of it leaks into the API's OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openft.api.app import create_app
from openft.api.dashboard.routes import STATIC_DIR, status_actions
from openft.domain.job_states import JobStatus, UserAction, action_sources
from openft.settings import Settings


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The real app; the lifespan (database, worker) is not started: these routes need none of it."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), api_key="k")
    return TestClient(create_app(settings))


def test_the_page_is_served_at_root_with_a_strict_csp(http: TestClient) -> None:
    response = http.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy
    assert "/dashboard/static/js/main.js" in response.text


def test_every_static_file_the_page_names_is_served(http: TestClient) -> None:
    for name in ("js/main.js", "app.css", "vendor/uPlot.iife.min.js", "vendor/uPlot.min.css"):
        response = http.get(f"/dashboard/static/{name}")
        assert response.status_code == 200, name
        assert response.content == (STATIC_DIR / name).read_bytes()
    assert http.get("/dashboard/static/js/main.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path", ["../routes.py", "..%2froutes.py", "/etc/passwd", "js/../../routes.py", "nope.js", "js"]
)
def test_nothing_outside_the_static_folder_is_served(http: TestClient, path: str) -> None:
    response = http.get(f"/dashboard/static/{path}")
    assert response.status_code == 404
    assert "error" in response.json()


def test_config_lists_the_actions_of_the_state_machine(http: TestClient) -> None:
    config = http.get("/dashboard/config.json").json()
    assert config["actions"] == status_actions()
    for status in JobStatus:
        for action in UserAction:
            assert (action.value in config["actions"][status.value]) == (status in action_sources(action))
    assert set(config["terminal"]) == {"succeeded", "failed", "cancelled"}


def test_dashboard_routes_are_not_in_the_openapi_document(http: TestClient) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)
    assert http.get("/health").status_code == 200


def test_the_vendored_chart_library_keeps_its_license() -> None:
    vendor = Path(STATIC_DIR, "vendor")
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()
    assert "uPlot (v1.6.32)" in (vendor / "uPlot.iife.min.js").read_text()[:200]
