"""With `OPENFT_STORAGE_URL` on a real S3 server (SeaweedFS on loopback), the job folder is only a cache.

The whole SDK lifecycle on one server: upload, a job (events, checkpoints, the result file), chat with its model.
Then the same job again, with the server killed (SIGKILL) mid-training, the job's folder deleted (a lost disk, or
another machine) and the server started again: the job resumes from the newest checkpoint in the bucket and ends
with the same result file (every step's loss) and adapter weights, bit for bit, each step once in the events.
Serving restores the model from the bucket once the cache is gone too. Nothing is stored under the data folder
except caches (`cache/`): the database is PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.databases import postgres_available, postgres_schema_url
from tests.support.processes import training_processes
from tests.support.seaweedfs import SeaweedFS
from tests.support.server import start_server
from tests.support.waiting import all_events, wait_for, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 2}  # 24 examples → 36 steps
ALLOWED_OUTSIDE_CACHE = {"database.json", "server.log"}
"""The folder's binding to its database (services/data_folder.py) and this test's own server log."""


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable")
    with postgres_schema_url() as url:
        yield url


def stored_step(seaweedfs: SeaweedFS, job_id: str) -> int:
    """The newest step of the job's checkpoints complete in the bucket (a stored folder's manifest is written last;
    folders are named `<job>.step_NNNNNN`, services/checkpoint_mirror.py)."""
    prefix = f"site-a/checkpoints/{job_id}.step_"
    listing = seaweedfs.client().list_objects_v2(Bucket=seaweedfs.bucket, Prefix=prefix)
    names = [item["Key"][len(prefix) :] for item in listing.get("Contents", [])]
    return max((int(name.split("/")[0]) for name in names if name.endswith("/manifest.json")), default=0)


def _environment(seaweedfs: SeaweedFS, database_url: str) -> dict[str, str]:
    return {
        **seaweedfs.server_environment(f"s3://{seaweedfs.bucket}/site-a"),
        "OPENFT_DATABASE_URL": database_url,
        "OPENFT_CHECKPOINT_EVERY_STEPS": "4",
        "OPENFT_LEASE_SECONDS": "3",
    }


def _create(client: OpenAI, training_id: str) -> str:
    method = {"type": "supervised", "supervised": {"hyperparameters": HYPERPARAMETERS}}
    return client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_id, seed=11, method=method).id  # type: ignore[arg-type]


def _losses(client: OpenAI, job_id: str) -> list[tuple[str, str]]:
    job = client.fine_tuning.jobs.retrieve(job_id)
    rows = csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text))
    return [(row["step"], row["train_loss"]) for row in rows]


def test_the_job_folder_is_a_cache_of_the_bucket(
    tmp_path: Path, models_dir: Path, seaweedfs: SeaweedFS, database_url: str
) -> None:
    data_dir = tmp_path / "data"
    env = _environment(seaweedfs, database_url)
    server = start_server(data_dir, models_dir, extra_env=env)
    jobs_cache = data_dir / "cache" / "jobs"
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(24))), purpose="fine-tune")

        reference = _create(client, training.id)
        done = wait_for_status(client, reference, {"succeeded"}, timeout=300)
        assert [int(step) for step, _ in _losses(client, reference)] == list(range(1, 37))
        assert [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(reference)]  # epoch checkpoints
        reply = client.chat.completions.create(
            model=done.fine_tuned_model or "", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content is not None
        reference_weights = load_file(jobs_cache / reference / "model" / "adapter_model.safetensors")

        crashed = _create(client, training.id)
        wait_for(
            lambda: any(
                e.type == "metrics" and e.data["step"] >= 14
                for e in client.fine_tuning.jobs.list_events(crashed, limit=5)
            ),
            timeout=240,
            what="step 14 (checkpoints at 4, 8, 12 stored)",
        )
        # the worker stores checkpoints as the trainer commits them; on a loaded machine it may lag behind
        wait_for(lambda: stored_step(seaweedfs, crashed) >= 12, timeout=120, what="checkpoint 12 in the bucket")
        server.process.kill()  # SIGKILL: no checkpoint of its own, no goodbye
        server.process.wait()
        wait_for(lambda: not training_processes(crashed), timeout=120, what="the orphaned trainer to exit")
        shutil.rmtree(jobs_cache / crashed)  # the cache lost: only the bucket knows the job's checkpoints
        server = start_server(data_dir, models_dir, extra_env=env, port=int(server.url.rsplit(":", 1)[1]))
        client = OpenAI(base_url=f"{server.url}/v1", api_key=server.api_key, max_retries=0)
        finished = wait_for_status(client, crashed, {"succeeded"}, timeout=400)
        assert _losses(client, crashed) == _losses(client, reference)
        weights = load_file(jobs_cache / crashed / "model" / "adapter_model.safetensors")
        assert weights.keys() == reference_weights.keys()
        assert all(torch.equal(weights[name], reference_weights[name]) for name in weights)
        events = all_events(client, crashed)
        assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, 37))
        resumed = [e.message for e in events if e.message.startswith("Fine-tuning resumed from the checkpoint")]
        assert resumed and int(resumed[-1].split("step ")[1].split(" ")[0]) >= 12, resumed

        shutil.rmtree(jobs_cache)  # every job folder gone: serving pulls the model from the bucket
        reply = client.chat.completions.create(
            model=finished.fine_tuned_model or "", messages=[{"role": "user", "content": "Hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content is not None
        assert (jobs_cache / crashed / ".served").is_file()  # a cache entry, within OPENFT_MODEL_CACHE_GB
    finally:
        server.stop()

    stored = [p.relative_to(data_dir) for p in data_dir.rglob("*") if p.is_file()]
    outside = [p for p in stored if p.parts[0] != "cache" and str(p) not in ALLOWED_OUTSIDE_CACHE]
    assert outside == [], outside
