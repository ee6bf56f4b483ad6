"""A job whose two ranks run on two Ray nodes — two network namespaces of this test's own, joined by a veth pair,
each a "machine" with its own address (tests/support/netns.py): the Ray head and the openft server on host a, a
second Ray node on host b, one CPU each, so Ray Train must place one worker on each. The ranks meet through the
job folder (shared: same filesystem) and talk gloo over the pair, each bound to its node's address.

The job ends with the same result file and adapter weights as the same job on the local executor (2 ranks on
one machine, over loopback) in the test's own namespace.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.conftest import make_client
from tests.support import netns
from tests.support.data import jsonl_bytes, valid_examples
from tests.support.server import RunningServer
from tests.support.waiting import wait_for_status

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
RAY_PORT = 6379  # each namespace has ports of its own
ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _start_node(host: netns.Host, temp: Path, head: str | None) -> Path:
    ray = str(Path(sys.executable).with_name("ray"))
    role = ["--head", f"--port={RAY_PORT}", "--include-dashboard=false"] if head is None else [f"--address={head}"]
    command = host.command(
        ray, "start", "--block", *role, f"--node-ip-address={host.address}", "--num-cpus=1", "--num-gpus=0",
        f"--temp-dir={temp}", "--disable-usage-stats", "--object-store-memory=100000000",
    )  # fmt: skip
    log_path = temp.with_suffix(".log")
    with open(log_path, "ab") as log:
        subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, start_new_session=True
        )
    deadline = time.monotonic() + 90
    while "Ray runtime started" not in log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray node on {host.address} did not start:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.5)
    return log_path


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_a_job_on_two_ray_nodes_gives_the_result_of_one_machine(
    server: RunningServer, models_dir: Path, tmp_path: Path
) -> None:
    temp = Path(tempfile.mkdtemp(prefix="ray2n", dir="/tmp"))  # short: Ray's socket paths have a length limit
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, temp, ignore_errors=True)
        hosts = cleanup.enter_context(netns.TwoHosts())
        head = f"{hosts.a.address}:{RAY_PORT}"
        _start_node(hosts.a, temp / "a", None)
        _start_node(hosts.b, temp / "b", head)
        run = subprocess.run(
            hosts.a.command(
                sys.executable, "-m", "tests.support.ray_two_nodes_job", str(tmp_path), head, str(models_dir)
            ),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
            env={**os.environ, **ENV},
        )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    outcome = json.loads(run.stdout.strip().splitlines()[-1])
    job_folder = Path(outcome["data_dir"]) / "jobs" / outcome["job_id"]
    train_log = (job_folder / "train.log").read_text(errors="replace")
    assert outcome["status"] == "succeeded", (outcome, train_log[-3000:])
    assert f"on {hosts.a.address}" in train_log and f"on {hosts.b.address}" in train_log  # one rank per node

    client = make_client(server, "openai")  # the same job on the local executor, in this namespace
    training = client.files.create(file=("t.jsonl", jsonl_bytes(valid_examples(16))), purpose="fine-tune")
    hyperparameters = {"n_epochs": 2, "batch_size": 2, "compute": {"workers": 2, "gpus_per_worker": 0}}
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    local = client.fine_tuning.jobs.create(model="tiny-llama", training_file=training.id, seed=5, method=method)  # type: ignore[arg-type]
    wait_for_status(client, local.id, {"succeeded"}, timeout=300)
    ours = (job_folder / "results.csv").read_text()
    theirs = (server.data_dir / "jobs" / local.id / "results.csv").read_text()
    assert _losses(ours) == _losses(theirs)
    a = load_file(job_folder / "model" / "adapter_model.safetensors")
    b = load_file(server.data_dir / "jobs" / local.id / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(csv_text: str) -> list[tuple[str, str]]:
    return [(row["step"], row["train_loss"]) for row in csv.DictReader(io.StringIO(csv_text))]
