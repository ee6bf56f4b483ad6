"""`openft keys create|list|revoke` on a data folder (SQLite) or `OPENFT_DATABASE_URL` (SQLite and
PostgreSQL): JSON output, nothing secret in listings, and the keys work (or stop working) for the service."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from openft.cli import app
from openft.db.engine import make_engine, make_session_factory
from openft.services.auth import KeyService
from tests.support.databases import sqlite_url

runner = CliRunner()


def _run(args: list[str], env: dict[str, str] | None = None, *, ok: bool = True) -> Any:
    result = runner.invoke(app, args, env=env)
    assert (result.exit_code == 0) is ok, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def _json(args: list[str], env: dict[str, str]) -> Any:
    return json.loads(_run([*args, "--json"], env).stdout)


def _authenticates(url: str, key: str) -> bool:
    engine = make_engine(url)
    try:
        return KeyService(make_session_factory(engine)).authenticate(key) is not None
    finally:
        engine.dispose()


def test_create_list_revoke_json(database_url: str) -> None:
    env = {"OPENFT_DATABASE_URL": database_url}
    team = _json(["keys", "create", "--org", "team-a", "--project", "search", "--rate-limit", "7"], env)
    admin = _json(["keys", "create", "--org", "ops", "--admin"], env)
    assert team["key"].startswith("sk-openft-") and team["key_id"].startswith("key-")
    assert {"org": "team-a", "project": "search", "admin": False, "rate_limit_per_minute": 7}.items() <= team.items()
    assert {"org": "ops", "project": None, "admin": True}.items() <= admin.items()
    assert _authenticates(database_url, team["key"]) and _authenticates(database_url, admin["key"])

    listed = _run(["keys", "list", "--json"], env).stdout
    for created in (team, admin):
        assert created["key"] not in listed
        assert hashlib.sha256(created["key"].encode()).hexdigest() not in listed
    rows = json.loads(listed)
    assert [r["id"] for r in rows] == [team["key_id"], admin["key_id"]]
    assert {"id", "org", "project", "admin", "created_at", "revoked_at", "prefix"} <= set(rows[0])
    assert rows[0]["org"] == "team-a" and rows[0]["project"] == "search" and rows[1]["admin"] is True
    assert team["key"].startswith(rows[0]["prefix"]) and rows[0]["revoked_at"] is None
    assert [r["id"] for r in _json(["keys", "list", "--org", "ops"], env)] == [admin["key_id"]]

    revoked = _json(["keys", "revoke", team["key_id"]], env)
    assert revoked["id"] == team["key_id"] and isinstance(revoked["revoked_at"], int)
    assert not _authenticates(database_url, team["key"])
    assert _authenticates(database_url, admin["key"])
    assert [r["id"] for r in _json(["keys", "list", "--active"], env)] == [admin["key_id"]]
    assert [r["revoked_at"] is not None for r in _json(["keys", "list"], env)] == [True, False]


def test_data_dir_and_plain_output(tmp_path: Path) -> None:
    data = tmp_path / "data"
    created = _run(["keys", "create", "--org", "team-b", "--project", "p", "--data-dir", str(data)]).stdout
    key = next(word for word in created.split() if word.startswith("sk-openft-"))
    key_id = next(word for word in created.split() if word.startswith("key-"))
    assert "team-b" in created and "project p" in created
    assert _authenticates(sqlite_url(data), key)  # the database `openft serve --data-dir` uses

    table = _run(["keys", "list", "--data-dir", str(data)]).stdout
    assert key_id in table and "team-b" in table and key not in table and key[:14] in table

    revoked = _run(["keys", "revoke", key_id, "--data-dir", str(data)]).stdout
    assert f"revoked {key_id}" in revoked
    assert not _authenticates(sqlite_url(data), key)


def test_errors_exit_1_with_a_json_error(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)]
    result = _run(["keys", "revoke", "key-nope", "--json", *data], ok=False)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"]["code"] == "not_found"
    assert "No such API key" in result.stderr
    result = _run(["keys", "create", "--org", "a:b", *data], ok=False)
    assert "Invalid org name" in result.stderr
    result = _run(["keys", "create", "--org", "ok", "--rate-limit", "0", "--json", *data], ok=False)
    assert json.loads(result.stdout)["error"]["param"] == "rate_limit"
    assert _json(["keys", "list"], {"OPENFT_DATA_DIR": str(tmp_path)}) == []


def test_limits_from_keys_create_and_orgs_set_limits(database_url: str) -> None:
    """`keys create --max-…` sets the organization's limits; `orgs set-limits` changes or removes them; the
    limits are on the organization row, which the claim and the quota checks read."""
    env = {"OPENFT_DATABASE_URL": database_url}
    created = _json(
        [
            "keys",
            "create",
            "--org",
            "team-l",
            "--max-running-jobs",
            "2",
            "--max-queued-jobs",
            "5",
            "--max-storage-gb",
            "1.5",
        ],
        env,
    )
    assert created["org"] == "team-l"
    (org,) = [row for row in _json(["orgs", "list"], env) if row["org"] == "team-l"]
    assert (org["max_running_jobs"], org["max_queued_jobs"], org["max_storage_bytes"]) == (2, 5, 1_500_000_000)

    changed = _json(["orgs", "set-limits", "team-l", "--max-running-jobs", "1", "--unlimited", "storage"], env)
    assert (changed["max_running_jobs"], changed["max_queued_jobs"], changed["max_storage_bytes"]) == (1, 5, None)
    (org,) = [row for row in _json(["orgs", "list"], env) if row["org"] == "team-l"]
    assert org["max_running_jobs"] == 1 and org["max_storage_bytes"] is None

    bad = _run(["orgs", "set-limits", "team-l", "--max-queued-jobs", "-1", "--json"], env, ok=False)
    assert json.loads(bad.stdout)["error"]["param"] == "max_queued_jobs"
    missing = _run(["orgs", "set-limits", "nobody", "--max-queued-jobs", "1", "--json"], env, ok=False)
    assert json.loads(missing.stdout)["error"]["code"] == "not_found"
    bad = _run(["keys", "create", "--org", "team-m", "--max-storage-gb", "-2", "--json"], env, ok=False)
    assert json.loads(bad.stdout)["error"]["param"] == "max_storage_gb"
