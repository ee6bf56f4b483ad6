"""`openft import openai|azure` against a second openft server acting as the vendor (it speaks the same API).

The vendor holds three jobs on one training file: one succeeded (supervised, with a validation file,
suffix, seed, metadata and explicit hyperparameters), one cancelled supervised job and one cancelled DPO
job. The import runs in-process through the CLI, the vendor reached with the official SDK on its OpenAI
and Azure dated dialects, the target being the module's `server`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from openft.client.import_plan import MODEL_KEY, SOURCE_KEY
from openft.datasets.auto import auto_learning_rate_multiplier
from tests.cli.conftest import Cli
from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import AZURE_API_VERSION
from tests.support.data import jsonl_bytes, preference_examples, valid_examples
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for_status

pytestmark = pytest.mark.e2e

VENDOR_KEY = "sk-vendor-test-key"
FAST = {"n_epochs": 1, "batch_size": 4}


@dataclass
class Vendor:
    server: RunningServer
    client: OpenAI
    succeeded: Any
    cancelled: Any
    dpo: Any
    files: dict[str, bytes]
    """The vendor's file contents by id."""


def _sdk(server: RunningServer) -> OpenAI:
    return OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Vendor]:
    running = start_server(tmp_path_factory.mktemp("vendor-data"), models_dir, api_key=VENDOR_KEY)
    try:
        client = _sdk(running)
        contents = {
            "train.jsonl": jsonl_bytes(valid_examples(12)),
            "valid.jsonl": jsonl_bytes(valid_examples(4)),
            "prefs.jsonl": jsonl_bytes(preference_examples(10)),
        }
        ids = {name: client.files.create(file=(name, data), purpose="fine-tune").id for name, data in contents.items()}
        succeeded = client.fine_tuning.jobs.create(
            model=TINY_MODEL_NAME,
            training_file=ids["train.jsonl"],
            validation_file=ids["valid.jsonl"],
            suffix="imp-a",
            seed=11,
            metadata={"team": "support", "ticket": "T-1"},
            method={"type": "supervised", "supervised": {"hyperparameters": FAST | {"learning_rate_multiplier": 2.0}}},
        )
        cancelled = client.fine_tuning.jobs.create(
            model=TINY_MODEL_NAME,
            training_file=ids["train.jsonl"],
            seed=12,
            method={"type": "supervised", "supervised": {"hyperparameters": FAST}},
        )
        dpo = client.fine_tuning.jobs.create(
            model=TINY_MODEL_NAME,
            training_file=ids["prefs.jsonl"],
            suffix="imp-dpo",
            method={"type": "dpo", "dpo": {"hyperparameters": FAST | {"beta": 0.2}}},
        )
        client.fine_tuning.jobs.cancel(cancelled.id)
        client.fine_tuning.jobs.cancel(dpo.id)
        succeeded = wait_for_status(client, succeeded.id, {"succeeded"})
        yield Vendor(
            running,
            client,
            succeeded,
            client.fine_tuning.jobs.retrieve(cancelled.id),
            client.fine_tuning.jobs.retrieve(dpo.id),
            {ids[name]: data for name, data in contents.items()},
        )
    finally:
        running.stop()


@pytest.fixture
def cli(server: RunningServer, tmp_path: Path) -> Cli:
    """`openft …` pointed at the target server (the vendor is given by flags)."""
    return Cli({"OPENFT_BASE_URL": server.url, "OPENFT_API_KEY": server.api_key, "OPENFT_DATA_DIR": str(tmp_path)})


def _openai_args(vendor: Vendor, *extra: str) -> list[str]:
    return ["import", "openai", "--base-url", f"{vendor.server.url}/v1", "--api-key", VENDOR_KEY, *extra]


def _azure_args(vendor: Vendor, *extra: str) -> list[str]:
    return [
        "import",
        "azure",
        "--endpoint",
        vendor.server.url,
        "--api-key",
        VENDOR_KEY,
        "--api-version",
        AZURE_API_VERSION,
        *extra,
    ]


ALL = ("--status", "succeeded", "--status", "cancelled", "--map", f"{TINY_MODEL_NAME}={TINY_MODEL_NAME}")


def _imports(target: OpenAI, source: str) -> list[Any]:
    return list(target.fine_tuning.jobs.list(limit=100, metadata={SOURCE_KEY: source}))


def _counts(target: OpenAI) -> tuple[int, int]:
    return len(list(target.fine_tuning.jobs.list(limit=100))), len(list(target.files.list()))


def test_unmapped_model_is_skipped_and_nothing_planned_exits_1(vendor: Vendor, cli: Cli, server: RunningServer) -> None:
    before = _counts(_sdk(server))
    result = cli(*_openai_args(vendor), code=1)
    assert f"no openft base for vendor model '{TINY_MODEL_NAME}'" in result.stdout
    assert f"--map {TINY_MODEL_NAME}=" in result.stdout
    assert _counts(_sdk(server)) == before


def test_dry_run_prints_the_plan_and_creates_nothing(vendor: Vendor, cli: Cli, server: RunningServer) -> None:
    target = _sdk(server)
    before = _counts(target)
    plan = json.loads(cli(*_openai_args(vendor, *ALL, "--dry-run", "--json")).stdout)
    assert plan["dry_run"] is True
    by_id = {job["vendor_job_id"]: job for job in plan["jobs"]}
    assert list(by_id) == [vendor.succeeded.id, vendor.cancelled.id, vendor.dpo.id]  # oldest first
    first = by_id[vendor.succeeded.id]
    assert first["action"] == "create" and first["base"] == TINY_MODEL_NAME
    assert first["training_file"] == {
        "id": vendor.succeeded.training_file,
        "filename": "train.jsonl",
        "bytes": len(vendor.files[vendor.succeeded.training_file]),
    }
    assert first["validation_file"]["filename"] == "valid.jsonl"
    assert first["estimate"]["tokens"] == vendor.succeeded.trained_tokens
    assert first["estimate"]["basis"] == "vendor trained_tokens" and first["estimate"]["seconds"] > 0
    assert by_id[vendor.cancelled.id]["estimate"]["basis"].startswith("training file bytes / 4 × 1 epochs")
    assert first["hyperparameters"] == {"n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
    text = cli(*_openai_args(vendor, *ALL, "--dry-run")).stdout
    assert "dry run: nothing created" in text and vendor.succeeded.id in text and "train.jsonl" in text
    assert "estimate" in text
    assert _counts(target) == before
    # --id narrows to one job and takes any status; --since after every job leaves none
    only = json.loads(cli(*_openai_args(vendor, "--id", vendor.dpo.id, *ALL[4:], "--dry-run", "--json")).stdout)
    assert [job["vendor_job_id"] for job in only["jobs"]] == [vendor.dpo.id]
    later = str(vendor.dpo.created_at + 10)
    none = json.loads(cli(*_openai_args(vendor, *ALL, "--since", later, "--dry-run", "--json")).stdout)
    assert none["jobs"] == []


def _cancel(target: OpenAI, job_id: str) -> None:
    """Stop an imported job this test does not need trained (it may have finished already; never failed)."""
    job = target.fine_tuning.jobs.retrieve(job_id)
    assert job.status != "failed", job.error
    if job.status not in ("succeeded", "cancelled"):
        target.fine_tuning.jobs.cancel(job_id)


def _expected_hyperparameters(job: Any) -> dict[str, Any]:
    hyper = job.method.to_dict()[job.method.type]["hyperparameters"]
    expected = {name: hyper.get(name) for name in ("n_epochs", "batch_size")}
    lr = hyper.get("learning_rate_multiplier")
    expected["learning_rate_multiplier"] = lr * 0.5 if isinstance(lr, float | int) else lr
    return expected


def test_import_recreates_files_and_jobs_once(vendor: Vendor, cli: Cli, server: RunningServer) -> None:
    target = _sdk(server)
    jobs_before, files_before = _counts(target)
    result = cli(*_openai_args(vendor, *ALL))
    assert "created 3 job(s)" in result.stdout, result.stdout
    # the three jobs share one training file: train, valid and prefs are uploaded once each
    assert _counts(target) == (jobs_before + 3, files_before + 3)

    created: dict[str, Any] = {}
    for job in (vendor.succeeded, vendor.cancelled, vendor.dpo):
        (imported,) = _imports(target, f"openai:{job.id}")
        created[job.id] = imported
        assert imported.model == TINY_MODEL_NAME and imported.seed == job.seed
        assert getattr(imported, "user_provided_suffix", None) == getattr(job, "user_provided_suffix", None)
        expected_metadata = dict(job.metadata or {}) | {SOURCE_KEY: f"openai:{job.id}"}
        if job.fine_tuned_model:
            expected_metadata[MODEL_KEY] = job.fine_tuned_model
        assert imported.metadata == expected_metadata
        assert imported.method.type == job.method.type
        hyper = imported.method.to_dict()[imported.method.type]["hyperparameters"]
        for name, value in _expected_hyperparameters(job).items():
            if value == "auto":  # sent as "auto"; the target resolves it once it has read the file
                value = hyper[name] if hyper[name] == "auto" else auto_learning_rate_multiplier(hyper["batch_size"])
            assert hyper[name] == value, (name, hyper, job.method)
        for vendor_file, new_file in (
            (job.training_file, imported.training_file),
            (job.validation_file, imported.validation_file),
        ):
            if vendor_file is None:
                assert new_file is None
                continue
            assert target.files.content(new_file).content == vendor.files[vendor_file]
            assert target.files.retrieve(new_file).filename == vendor.client.files.retrieve(vendor_file).filename
    dpo_hyper = created[vendor.dpo.id].method.to_dict()["dpo"]["hyperparameters"]
    assert created[vendor.dpo.id].method.type == "dpo" and dpo_hyper["beta"] == 0.2
    assert getattr(created[vendor.succeeded.id], "user_provided_suffix", None) == "imp-a"
    assert created[vendor.cancelled.id].training_file == created[vendor.succeeded.id].training_file
    for job_id in (vendor.cancelled.id, vendor.dpo.id):  # only the succeeded one needs to train here
        _cancel(target, created[job_id].id)

    # again: nothing new, each job named with its import
    counts = _counts(target)
    again = cli(*_openai_args(vendor, *ALL))
    for imported in created.values():
        assert f"already imported as {imported.id}" in again.stdout, again.stdout
    assert "created" not in again.stdout.replace("created (UTC)", "")
    assert _counts(target) == counts

    # the old model name answers on openft once the imported job succeeded (the server's alias)
    done = wait_for_status(target, created[vendor.succeeded.id].id, {"succeeded"})
    reply = target.chat.completions.create(
        model=vendor.succeeded.fine_tuned_model,
        messages=[{"role": "user", "content": "How fast does it boil?"}],
        max_tokens=4,
        temperature=0,
    )
    assert reply.choices[0].message.role == "assistant" and done.fine_tuned_model
    assert done.fine_tuned_model != vendor.succeeded.fine_tuned_model  # the old name answers only by its alias
    with pytest.raises(openai.NotFoundError):  # and a name nothing points at does not
        target.chat.completions.create(
            model=vendor.succeeded.fine_tuned_model + "x", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )


def test_azure_dialect_import_is_idempotent_too(vendor: Vendor, cli: Cli, server: RunningServer) -> None:
    target = _sdk(server)
    args = _azure_args(vendor, "--id", vendor.cancelled.id, "--map", f"{TINY_MODEL_NAME}={TINY_MODEL_NAME}")
    plan = json.loads(cli(*args, "--dry-run", "--json").stdout)
    assert [(job["vendor_job_id"], job["action"]) for job in plan["jobs"]] == [(vendor.cancelled.id, "create")]
    counts = _counts(target)
    result = json.loads(cli(*args, "--json").stdout)
    (imported,) = _imports(target, f"azure:{vendor.cancelled.id}")
    assert result["dry_run"] is False and [job["openft_job"] for job in result["jobs"]] == [imported.id]
    _cancel(target, imported.id)
    assert imported.seed == vendor.cancelled.seed and MODEL_KEY not in (imported.metadata or {})
    assert target.files.content(imported.training_file).content == vendor.files[vendor.cancelled.training_file]
    assert _counts(target)[0] == counts[0] + 1
    again = cli(*args)
    assert f"already imported as {imported.id}" in again.stdout
    assert _counts(target)[0] == counts[0] + 1
