"""`compute: {workers, gpus_per_worker}` at job creation: more than this machine holds is a 400 naming `compute`.

On this machine (no GPU): more workers than usable CPUs, or any GPU per worker, is refused; as many workers as
CPUs is accepted. The GPU arithmetic (workers × gpus_per_worker against the visible GPUs) is checked with the
GPU count of a machine that has some.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from openft.api.app import create_app
from openft.jobs.job_file import usable_cpus
from openft.protocol.fine_tuning import MAX_WORKERS
from openft.services import fine_tuning
from openft.services.container import build_container
from openft.settings import Settings
from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, valid_examples

KEY = "sk-openft-compute-test"
PARAM = "method.supervised.hyperparameters.compute"


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", models_dir=models_dir, api_key=KEY, run_worker=False)
    with TestClient(create_app(settings, container=build_container(settings, with_worker=False))) as served:
        served.headers["Authorization"] = f"Bearer {KEY}"
        yield served


def _create(client: TestClient, compute: dict[str, Any]) -> Any:
    upload = client.post(
        "/v1/files", files={"file": ("t.jsonl", jsonl_bytes(valid_examples(12)))}, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 200, upload.text
    method = {"type": "supervised", "supervised": {"hyperparameters": {"compute": compute}}}
    return client.post(
        "/v1/fine_tuning/jobs", json={"model": TINY_MODEL_NAME, "training_file": upload.json()["id"], "method": method}
    )


def test_more_workers_than_cpus_is_a_400_naming_compute(client: TestClient) -> None:
    cpus = usable_cpus()
    if cpus >= MAX_WORKERS:
        pytest.skip("this machine has as many CPUs as a job may ask workers")
    refused = _create(client, {"workers": cpus + 1, "gpus_per_worker": 0})
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == PARAM and f"{cpus + 1} workers on the CPU" in error["message"]
    accepted = _create(client, {"workers": cpus, "gpus_per_worker": 0})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["method"]["supervised"]["hyperparameters"]["compute"] == {
        "workers": cpus,
        "gpus_per_worker": 0,
    }


def test_gpus_on_a_machine_without_one_are_a_400(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fine_tuning, "visible_gpus", lambda: 0)  # this machine, whatever the test host has
    refused = _create(client, {"workers": 1, "gpus_per_worker": 1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == PARAM
    assert "needs a GPU" in refused.json()["error"]["message"]
    assert _create(client, {"workers": 1}).status_code == 200  # one worker, on the CPU here


def test_workers_times_gpus_must_fit_the_visible_gpus(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fine_tuning, "visible_gpus", lambda: 4)  # a machine with 4 GPUs
    assert _create(client, {"workers": 4, "gpus_per_worker": 1}).status_code == 200
    assert _create(client, {"workers": 4}).status_code == 200  # one GPU each by default
    refused = _create(client, {"workers": 5, "gpus_per_worker": 1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == PARAM
    assert "need 5 GPUs; this server has 4" in refused.json()["error"]["message"]
    assert _create(client, {"workers": 5}).status_code == 400


def test_more_than_one_gpu_per_worker_is_a_400(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank drives one device (no tensor parallelism): a second GPU per worker would sit idle, so it is refused
    with the equivalent that works."""
    monkeypatch.setattr(fine_tuning, "visible_gpus", lambda: 4)
    refused = _create(client, {"workers": 2, "gpus_per_worker": 2})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == PARAM
    assert "use workers 4 instead" in refused.json()["error"]["message"]
