"""Run tests/node/sdk_checks.mjs: the official OpenAI Node SDK (pinned in tests/node/package-lock.json, installed
by `make setup`) against a real openft server, for the calls whose client code differs from Python's."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def run_node_checks(base_url: str, api_key: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    """Each check's result by name; skips the test when Node.js or the SDK is missing (no npm on the machine)."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("the Node SDK is not installed (needs node and npm; `make setup` installs it in tests/node)")
    plan = json.dumps({"baseURL": base_url, "apiKey": api_key, "checks": checks})
    done = subprocess.run(
        [node, str(NODE_DIR / "sdk_checks.mjs"), plan], capture_output=True, text=True, timeout=120, cwd=NODE_DIR
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {item["name"]: item["result"] for item in json.loads(done.stdout)}
