"""Jobs on a real local Ray cluster (`openft serve --executor ray`): one Ray Train run of 2 CPU workers per job.

The same job twice on the same server: undisturbed; and paused through the API and resumed, then with one Ray
Train worker process killed (SIGKILL; Ray Train restarts the worker group, whose ranks resume from the job's
newest checkpoint), then with the server itself — the Ray driver — killed and restarted. Both end with the same
result file (every step's loss, byte for byte) and bit-identical adapter weights, as does the job on the local
executor at the same world size (2 ranks through training/launcher.py), and so does a full fine-tune (FSDP2). A
cancel leaves no rank behind; a job waits in the queue while the cluster is full.

The cluster is `ray start --head` on 127.0.0.1 with 2 CPUs (tests/support/ray_cluster.py).
"""

from __future__ import annotations

import csv
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import make_client
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.processes import training_processes
from tests.support.ray_cluster import ENV, RayCluster, ray_cluster
from tests.support.server import RunningServer, start_server
from tests.support.waiting import all_events, wait_for, wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COMPUTE = {"workers": 2, "gpus_per_worker": 0}
HYPERPARAMETERS = {"n_epochs": 3, "batch_size": 2, "compute": COMPUTE}  # 32 examples → 48 steps
Result = tuple[list[dict[str, str]], dict[str, torch.Tensor]]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster(cpus=2) as running:
        yield running


def _environment(cluster: RayCluster) -> dict[str, str]:
    return {
        **ENV,
        "OPENFT_EXECUTOR": "ray",
        "OPENFT_RAY_ADDRESS": cluster.address,
        "OPENFT_CHECKPOINT_EVERY_STEPS": "4",
        "OPENFT_MAX_JOBS": "2",  # two job slots, but a 2-CPU cluster: the cluster is the bound
        "OPENFT_LEASE_SECONDS": "3",  # the driver-kill case: its job is taken back within seconds
    }


@pytest.fixture(scope="module")
def ray_server(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, cluster: RayCluster
) -> Iterator[RunningServer]:
    env = _environment(cluster)
    server = start_server(tmp_path_factory.mktemp("ray-server"), models_dir, extra_env=env, start_timeout=120)
    yield server
    server.stop()


@pytest.fixture
def client(ray_server: RunningServer) -> OpenAI:
    return make_client(ray_server, "openai")


def _create(client: OpenAI, training_id: str, **overrides: object) -> str:
    hyperparameters = {**HYPERPARAMETERS, **overrides}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    job = client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training_id, seed=7, method=method)  # type: ignore[arg-type]
    return job.id


def _at_step(client: OpenAI, job_id: str, step: int) -> None:
    wait_for(
        lambda: any(
            e.type == "metrics" and e.data["step"] >= step
            for e in client.fine_tuning.jobs.list_events(job_id, limit=20)
        ),
        timeout=240,
        what=f"step {step}",
    )


def _result(client: OpenAI, server: RunningServer, job_id: str) -> Result:
    job = wait_for_status(client, job_id, {"succeeded"}, timeout=600)
    rows = list(csv.DictReader(io.StringIO(client.files.content(job.result_files[0]).text)))
    weights: dict[str, torch.Tensor] = {}
    for path in sorted((server.data_dir / "jobs" / job_id / "model").glob("*.safetensors")):  # adapter or model
        weights.update(load_file(path))
    return rows, weights


def _same(
    a: tuple[list[dict[str, str]], dict[str, torch.Tensor]], b: tuple[list[dict[str, str]], dict[str, torch.Tensor]]
) -> None:
    assert [(r["step"], r["train_loss"]) for r in a[0]] == [(r["step"], r["train_loss"]) for r in b[0]]
    assert a[1].keys() == b[1].keys()
    assert all(torch.equal(a[1][name], b[1][name]) for name in a[1])


@pytest.fixture(scope="module")
def training_id(ray_server: RunningServer) -> str:
    client = make_client(ray_server, "openai")
    return client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(32))), purpose="fine-tune").id


@pytest.fixture(scope="module")
def reference(ray_server: RunningServer, training_id: str) -> Result:
    """The job run undisturbed on Ray."""
    client = make_client(ray_server, "openai")
    job_id = _create(client, training_id)
    result = _result(client, ray_server, job_id)
    assert [int(r["step"]) for r in result[0]] == list(range(1, 49))
    messages = [e.message for e in all_events(client, job_id)]
    assert sum(m.startswith("Training with 2 worker processes") for m in messages) == 1
    assert sum(m.startswith("Submitted to the Ray cluster: 2 worker(s) with 1 CPU each") for m in messages) == 1
    return result


def test_the_local_executor_at_the_same_world_size_gives_the_same_result(
    server: RunningServer, reference: Result
) -> None:
    """The Ray workers run the local launcher's rank program: 2 ranks give the same bits with either executor."""
    client = make_client(server, "openai")
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(32))), purpose="fine-tune")
    _same(_result(client, server, _create(client, training.id)), reference)


def test_cancelling_a_ray_job_leaves_no_rank_behind(client: OpenAI, cluster: RayCluster, training_id: str) -> None:
    job_id = _create(client, training_id, n_epochs=50)
    _at_step(client, job_id, 2)
    client.fine_tuning.jobs.cancel(job_id)
    wait_for_status(client, job_id, {"cancelled"})
    wait_for(lambda: not cluster.processes("ray::RayTrainWorker"), timeout=60, what="the Ray workers to end")
    wait_for(lambda: not training_processes(job_id), timeout=30, what="every rank to exit")


def test_a_job_larger_than_the_cluster_is_accepted_then_fails_with_compute_unavailable(client: OpenAI) -> None:
    """The API does not judge `compute` by its own machine when jobs run on Ray (here: 3 CPU workers on a server
    that may have 2 cores); the run, which sees the cluster, refuses it at once instead of waiting forever."""
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(16))), purpose="fine-tune")
    job_id = _create(client, training.id, compute={"workers": 3, "gpus_per_worker": 0})
    failed = wait_for_status(client, job_id, {"failed"}, timeout=120)
    assert failed.error.code == "compute_unavailable" and failed.error.param == "compute"
    assert "the Ray cluster has 2 CPU in all" in failed.error.message


def test_a_job_waits_in_the_queue_while_the_cluster_is_full(client: OpenAI) -> None:
    """The worker has two job slots, the cluster room for one 2-worker job: whichever job is claimed first, the
    other is not claimed (to wait inside Ray) but stays queued, first in line, until the first one is done."""
    small = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(16))), purpose="fine-tune")
    jobs = [_create(client, small.id, n_epochs=4) for _ in range(2)]  # 32 steps each

    def running() -> str | None:
        statuses = {job: client.fine_tuning.jobs.retrieve(job).status for job in jobs}
        return next((job for job, status in statuses.items() if status == "running"), None)

    first = wait_for(running, timeout=120, what="a job to run")
    (second,) = [job for job in jobs if job != first]
    _at_step(client, first, 2)
    assert client.fine_tuning.jobs.retrieve(first).status == "running"
    assert client.fine_tuning.jobs.retrieve(second).status == "queued"
    wait_for(
        lambda: any(e.message.startswith("Queued: position 1") for e in client.fine_tuning.jobs.list_events(second)),
        timeout=30,
        what="the second job's queue report",
    )
    wait_for_status(client, first, {"succeeded"}, timeout=300)
    wait_for_status(client, second, {"succeeded"}, timeout=300)


def test_a_full_fine_tune_on_ray_gives_the_local_executors_result(
    client: OpenAI, ray_server: RunningServer, server: RunningServer
) -> None:
    """Full fine-tuning shards the model over the ranks (FSDP2): the same bits on Ray as on one machine."""
    small = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    ray_result = _result(client, ray_server, _create(client, small.id, n_epochs=1, fine_tuning_mode="full"))
    assert [int(r["step"]) for r in ray_result[0]] == list(range(1, 7))
    local = make_client(server, "openai")
    training = local.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(12))), purpose="fine-tune")
    _same(_result(local, server, _create(local, training.id, n_epochs=1, fine_tuning_mode="full")), ray_result)


def _restart(server: RunningServer, models_dir: Path, env: dict[str, str]) -> None:
    """The module's server started again where it was (same port, data folder and database), in place."""
    again = start_server(
        server.data_dir, models_dir, extra_env=env, start_timeout=120, port=int(server.url.rsplit(":", 1)[1])
    )
    server.process = again.process


def test_a_ray_job_paused_then_with_a_worker_and_its_driver_killed_ends_identical(
    client: OpenAI,
    ray_server: RunningServer,
    cluster: RayCluster,
    training_id: str,
    reference: Result,
    models_dir: Path,
) -> None:
    """The Ray executor's chaos case, on one job: paused and resumed through the API; then one Ray Train worker
    process SIGKILLed (Ray Train restarts the group, whose ranks resume from the newest checkpoint — every 4 steps
    here); then the openft server, the Ray driver, SIGKILLed (Ray ends the run's actors with their owner, the
    ranks exit with their Ray workers, the job's lease expires and the restarted server resumes it). It ends
    with the undisturbed job's result file and weights, each step once in the events."""
    job_id = _create(client, training_id)
    _at_step(client, job_id, 6)
    client.fine_tuning.jobs.pause(job_id)
    wait_for_status(client, job_id, {"paused"}, timeout=180)
    assert not cluster.processes("ray::RayTrainWorker")  # the run ended: its workers are gone
    client.fine_tuning.jobs.resume(job_id)

    _at_step(client, job_id, 18)
    # both ranks' Ray worker processes (on a loaded machine ps can catch one of them still being named)
    wait_for(lambda: len(cluster.processes("ray::RayTrainWorker")) == 2, timeout=60, what="the two Ray workers")
    workers = cluster.processes("ray::RayTrainWorker")
    os.kill(workers[-1], signal.SIGKILL)
    wait_for(lambda: _resumed_at(client, job_id) >= 16, timeout=180, what="the restarted worker group to resume")

    _at_step(client, job_id, 30)
    ray_server.process.kill()
    ray_server.process.wait()
    wait_for(lambda: not training_processes(job_id), timeout=60, what="the ranks to end with their driver")
    wait_for(lambda: not cluster.processes("ray::RayTrainWorker"), timeout=60, what="the Ray workers to end")
    _restart(ray_server, models_dir, _environment(cluster))

    _same(_result(client, ray_server, job_id), reference)
    events = all_events(client, job_id)
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, 49))
    assert sum(e.message.startswith("Job paused at step") for e in events) == 1


def _resumed_at(client: OpenAI, job_id: str) -> int:
    """The step of the newest "Fine-tuning resumed from the checkpoint at step N of M." event (0: none)."""
    prefix = "Fine-tuning resumed from the checkpoint at step "
    for event in client.fine_tuning.jobs.list_events(job_id, limit=30):  # newest first
        if event.message.startswith(prefix):
            return int(event.message[len(prefix) :].split()[0])
    return 0
