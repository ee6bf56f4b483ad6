"""Schema-driven fuzzing: Schemathesis generates requests for every operation of `/openapi.json`.

It runs `st run` (the official runner: its examples, coverage, fuzzing and stateful phases) against a real
server on loopback. The document lists the three URL dialects (`/v1`, `/openai/v1` and `/openai` with its
required `api-version`), so every case runs against each of them. Checks: no 5xx and no dropped
connection (`not_a_server_error`), every 4xx in the OpenAI envelope (`schemathesis_hooks.py`), responses
that match the documented status codes, content types and schemas, wrong or missing keys refused
(`ignored_auth`), deleted files gone (`use_after_free`), invalid input refused (`negative_data_rejection`).

`positive_data_acceptance` is off: a request can match the schema and still be a 400 by the API's rules
(an unknown `after` cursor, a training file that is not there), as it is on OpenAI's servers.

Path, query and body parameters that name objects are drawn half the time from a dictionary: the ids of a
file and a job made beforehand (so the fuzzer also reaches past the 404s) and hostile names (`../..`,
absolute paths, NULs, encoded dots, very long strings) that must come back as a 4xx without touching the
filesystem. No model this server can load is ever named in an inference request, so those operations
only exercise request validation and model lookup (404 `model_not_found`) and stay fast.

Bounded: a fixed seed and 12 examples per operation and phase keep it to about a minute on 2 cores
(`OPENFT_FUZZ_EXAMPLES` and `OPENFT_FUZZ_SEED` widen or vary it when hunting by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer, start_server

REPO_ROOT = Path(__file__).resolve().parents[3]
ST = Path(sys.executable).with_name("st")
EXAMPLES = int(os.environ.get("OPENFT_FUZZ_EXAMPLES", "12"))
SEED = int(os.environ.get("OPENFT_FUZZ_SEED", "20250401"))
RUN_TIMEOUT_S = 300

HOSTILE_NAMES = [
    "../../etc/passwd",
    "..",
    "../..",
    "/etc/passwd",
    "/",
    "ft:../..",
    "ft:../../etc",
    "ft:tiny-llama:openft:../../x:12345678",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc",
    "..%2F..%2Fetc%2Fpasswd",
    "..\\..\\windows\\win.ini",
    "C:\\Windows\\System32",
    "~root",
    "tiny-llama/../../..",
    "./tiny-llama",
    "tiny-llama\u0000",
    "\u202etxt.exe",
    "a" * 300,
    "x" * 10_000,
]
"""Names that try to leave a folder, or that a filesystem call would choke on (ENAMETOOLONG, NUL)."""


def _toml(value: object) -> str:
    """TOML and JSON agree on strings (with \\u escapes), numbers, booleans and arrays of them."""
    return json.dumps(value)


def _config(server: RunningServer, file_id: str, job_id: str, report_dir: Path) -> str:
    dictionaries = {
        "file_ids": [file_id, *HOSTILE_NAMES],
        "job_ids": [job_id, *HOSTILE_NAMES],
        # tiny-llama is a base model: GET answers it, DELETE is a 403; it is never sent to inference
        "model_names": ["tiny-llama", *HOSTILE_NAMES],
        "hostile": HOSTILE_NAMES,
    }
    bindings = {
        "path.file_id": "file_ids",
        "path.fine_tuning_job_id": "job_ids",
        "path.model": "model_names",
        "path.deployment": "hostile",
        "query.after": "job_ids",
        "body.model": "hostile",
        "body.training_file": "file_ids",
        "body.validation_file": "file_ids",
    }
    lines = [
        f"base-url = {_toml(server.url)}",
        'hooks = "tests.api.fuzz.schemathesis_hooks"',
        "workers = 1",  # 2 hits a CPython 3.11 race in `ast` (schemathesis compiles code in threads)
        f"seed = {SEED}",
        'suppress-health-check = ["all"]',
        "",
        "[headers]",
        f"Authorization = {_toml('Bearer ' + server.api_key)}",
        "",
        "[generation]",
        f"max-examples = {EXAMPLES}",
        'mode = "all"',
        'database = "none"',
        "",
        "[checks]",
        "positive_data_acceptance.enabled = false",
        "",
        "[phases.stateful]",
        "max-steps = 10",
        "",
        "[reports]",
        f"directory = {_toml(str(report_dir))}",
        "",
        "[parameters]",
        *(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}' for key, name in bindings.items()),
    ]
    for name, values in dictionaries.items():
        lines += ["", f"[dictionaries.{name}]", f"values = {_toml(values)}"]
    # Inference and the data check (`/files/{id}/check`): never reuse names seen in responses (`GET /models`
    # lists tiny-llama and SmolLM2, which would load a model and generate, or convert SmolLM2 from GGUF for
    # its tokenizer), and no stateful links into them; request validation is fuzzed.
    # The coverage phase (boundary values of every parameter, the slowest phase) runs on `/v1`: it would
    # repeat the same cases on the Azure paths, which get the examples, fuzzing and stateful phases.
    no_inference = [
        "phases.fuzzing.extra-data-sources.responses = false",
        "phases.stateful.enabled = false",
    ]
    operations = {
        "^/v1/.*(completions|/check)$": ["phases.coverage.extra-data-sources.responses = false", *no_inference],
        "^/openai/.*(completions|/check)$": ["phases.coverage.enabled = false", *no_inference],
        "^/openai/.*(?<!completions)(?<!/check)$": ["phases.coverage.enabled = false"],
    }
    for regex, settings in operations.items():
        lines += ["", "[[operations]]", f"include-path-regex = {_toml(regex)}", *settings]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    """No worker: jobs stay `validating_files`, so nothing trains while the fuzzer runs."""
    # The fuzzer probes every operation with wrong keys from one address: no throttle of wrong keys here
    env = {"OPENFT_RUN_WORKER": "0", "OPENFT_AUTH_FAILURE_LIMIT": "0"}
    running = start_server(tmp_path_factory.mktemp("fuzz-data"), models_dir, extra_env=env)
    yield running
    running.stop()


@pytest.mark.e2e
def test_schemathesis_finds_no_server_error_and_only_enveloped_errors(server: RunningServer, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {server.api_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        upload = client.post(
            "/v1/files", files={"file": ("train.jsonl", jsonl_bytes(valid_examples(12)))}, data={"purpose": "fine-tune"}
        )
        upload.raise_for_status()
        job = client.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": upload.json()["id"]})
        job.raise_for_status()
        document = client.get("/openapi.json").json()
    operations = sum(len(methods) for methods in document["paths"].values())
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(server, upload.json()["id"], job.json()["id"], tmp_path / "reports"), encoding="utf-8")

    result = subprocess.run(
        [str(ST), "--no-color", "--config-file", str(config), "run", f"{server.url}/openapi.json"],
        cwd=tmp_path,  # st writes its .schemathesis cache into the working folder
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis found problems (server log: {server.log_path}):\n{output[-20000:]}"
    # a run that silently tested nothing (schema not loaded, every operation filtered out) must not pass
    assert f"{operations} selected / {operations} total" in output, output[-5000:]
    assert "Traceback" not in server.log(), server.log()[-5000:]
