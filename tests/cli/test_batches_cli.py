"""`openft batches` against a real server: a local file uploaded and run to completion, an uploaded file's id
whose batch fails validation, and each command's text, --json, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from openai import OpenAI

from tests.cli.conftest import Cli
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import write_jsonl

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"


def _line(custom_id: str) -> dict[str, object]:
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def test_batches_commands(cli: Cli, sdk: OpenAI, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "requests.jsonl", [_line(f"r{i}") for i in range(3)])
    created = cli.json("batches", "create", str(path), "--endpoint", CHAT, "--metadata", "run=cli")
    assert created["status"] == "validating" and created["metadata"] == {"run": "cli"}
    assert sdk.files.retrieve(created["input_file_id"]).purpose == "batch"

    followed = cli("batches", "follow", created["id"], "--interval", "0.2").stdout.splitlines()
    assert followed[0].startswith(("validating", "in_progress")), followed
    assert followed[-2] == "completed  3/3 done, 0 failed", followed
    assert len(followed) == len(set(followed))  # a line per change, not per poll
    done = cli.json("batches", "get", created["id"])
    assert done["status"] == "completed" and done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert f"output_file_id:  {done['output_file_id']}" in cli("batches", "get", created["id"]).stdout
    assert followed[-1] == f"  results: openft files download {done['output_file_id']} --out results.jsonl"
    again = cli("batches", "follow", created["id"], "--json").stdout.splitlines()
    assert [json.loads(line)["status"] for line in again] == ["completed"]

    assert created["id"] in [b["id"] for b in cli.json("batches", "list", "--limit", "5")]
    assert "3/3 done, 0 failed" in cli("batches", "list").stdout
    refused = cli("batches", "cancel", created["id"], code=1)
    assert refused.stderr.startswith("error: Cannot cancel a batch that is completed.")
    assert "Traceback" not in refused.output

    broken = write_jsonl(tmp_path / "broken.jsonl", [_line("a"), _line("b")], raw_lines={2: b"not json"})
    file_id = sdk.files.create(file=broken, purpose="batch").id
    text = cli("batches", "create", file_id, "--endpoint", CHAT).stdout
    assert text.startswith("created batch_") and f"from {file_id}" in text
    batch_id = text.split()[1]
    assert cli("batches", "follow", batch_id, "--interval", "0.2", code=1).stdout.splitlines()[-1].startswith("failed")
    assert "(line: 2, param: " in cli("batches", "get", batch_id).stdout

    missing = cli("batches", "create", str(tmp_path / "nope.jsonl"), "--endpoint", CHAT, code=1)
    assert missing.stderr.startswith("error: no such file:")
    envelope = json.loads(cli("batches", "get", "batch_nope", "--json", code=1).stdout)
    assert envelope["error"]["param"] == "batch_id"
