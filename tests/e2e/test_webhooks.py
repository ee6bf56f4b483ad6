"""Webhooks end to end: a real server, endpoints added with `openft webhooks add`, a real receiver on loopback,
and the official SDK's `client.webhooks.unwrap` verifying every delivery: failed, cancelled, paused and
succeeded jobs; a receiver that is down gets its events later, even across a restart of the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.support.data import jsonl_bytes, malformed_cases, valid_examples
from tests.support.node_sdk import run_node_checks
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for, wait_for_status
from tests.support.webhook_receiver import WebhookReceiver

FAST_RETRIES = {
    "OPENFT_WEBHOOK_POLL_SECONDS": "0.2",
    "OPENFT_WEBHOOK_RETRY_SECONDS": ",".join(["0.5"] * 40),
    "OPENFT_WEBHOOK_TIMEOUT_SECONDS": "5",
}


def openft(data_dir: Path, *args: str) -> Any:
    """An `openft webhooks …` command on the server's database, as the operator runs it; its --json output."""
    command = [sys.executable, "-m", "openft", "webhooks", *args, "--json", "--data-dir", str(data_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    running = WebhookReceiver().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server-data"), models_dir, extra_env=FAST_RETRIES)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def secret(server: RunningServer, receiver: WebhookReceiver) -> str:
    created = openft(server.data_dir, "add", receiver.url, "--org", "openft")
    assert created["event_types"] == [
        "fine_tuning.job.succeeded",
        "fine_tuning.job.failed",
        "fine_tuning.job.cancelled",
        "fine_tuning.job.paused",
    ]
    return str(created["secret"])


def events_of(client: OpenAI, receiver: WebhookReceiver, job_id: str, secret: str) -> list[Any]:
    """What the receiver got for `job_id`, each verified and parsed by the SDK (a bad signature raises)."""
    verified = [client.webhooks.unwrap(got.body, got.headers, secret=secret) for got in receiver.snapshot()]
    return [event for event in verified if event.data.id == job_id]


def wait_for_events(client: OpenAI, receiver: WebhookReceiver, job_id: str, secret: str, types: list[str]) -> list[Any]:
    def arrived() -> list[Any] | None:
        found = events_of(client, receiver, job_id, secret)
        return found if [event.type for event in found] == types else None

    return wait_for(arrived, timeout=60, what=f"{types} for {job_id}")


def _upload(client: OpenAI, data: bytes) -> str:
    return client.files.create(file=("t.jsonl", data), purpose="fine-tune").id


def _create(client: OpenAI, training: str, hyperparameters: dict[str, Any]) -> str:
    method = {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
    return client.fine_tuning.jobs.create(model=TINY_MODEL_NAME, training_file=training, seed=3, method=method).id


@pytest.mark.e2e
def test_failed_and_cancelled_jobs_send_signed_events(
    client: OpenAI, receiver: WebhookReceiver, secret: str, server: RunningServer
) -> None:
    bad_file, _code, _line = malformed_cases()["no_assistant"]
    failed = _create(client, _upload(client, bad_file), {"n_epochs": 1})
    cancelled = _create(client, _upload(client, jsonl_bytes(valid_examples(12))), {"n_epochs": 1})
    client.fine_tuning.jobs.cancel(cancelled)
    wait_for_status(client, failed, {"failed"})

    [event] = wait_for_events(client, receiver, failed, secret, ["fine_tuning.job.failed"])
    assert event.object == "event" and event.id.startswith("evt_") and event.created_at > 0
    [event] = wait_for_events(client, receiver, cancelled, secret, ["fine_tuning.job.cancelled"])
    got = [r for r in receiver.snapshot() if json.loads(r.body)["id"] == event.id]
    assert len(got) == 1 and got[0].headers["webhook-id"] == event.id
    assert got[0].headers["content-type"] == "application/json"
    with pytest.raises(Exception, match="signature"):
        client.webhooks.unwrap(got[0].body, got[0].headers, secret="whsec_" + "A" * 44)
    deliveries = [d for d in openft(server.data_dir, "list", "--deliveries") if d["job_id"] == cancelled]
    assert [(d["status"], d["attempt_count"], d["attempts"][0]["status_code"]) for d in deliveries] == [
        ("delivered", 1, 200)
    ]


@pytest.mark.e2e
def test_a_paused_then_resumed_job_sends_paused_then_succeeded(
    client: OpenAI, receiver: WebhookReceiver, secret: str
) -> None:
    job_id = _create(client, _upload(client, jsonl_bytes(valid_examples(24))), {"n_epochs": 4, "batch_size": 1})
    wait_for(
        lambda: (
            client.fine_tuning.jobs.retrieve(job_id).status == "running"
            and any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job_id, limit=5))
        ),
        what="a first step",
    )
    client.fine_tuning.jobs.pause(job_id)
    wait_for_status(client, job_id, {"paused"})
    [checkpoint] = list(client.fine_tuning.jobs.checkpoints.list(job_id))
    print(f"paused at step {checkpoint.step_number} of 96")
    wait_for_events(client, receiver, job_id, secret, ["fine_tuning.job.paused"])
    client.fine_tuning.jobs.resume(job_id)
    wait_for_status(client, job_id, {"succeeded"})
    events = wait_for_events(client, receiver, job_id, secret, ["fine_tuning.job.paused", "fine_tuning.job.succeeded"])
    assert events[0].id != events[1].id


@pytest.mark.e2e
def test_the_node_sdk_verifies_a_delivery(
    client: OpenAI, receiver: WebhookReceiver, secret: str, server: RunningServer
) -> None:
    """A Node receiver checks the same signature with its own code (Web Crypto, async `unwrap`)."""
    cancelled = _create(client, _upload(client, jsonl_bytes(valid_examples(12))), {"n_epochs": 1})
    client.fine_tuning.jobs.cancel(cancelled)
    [event] = wait_for_events(client, receiver, cancelled, secret, ["fine_tuning.job.cancelled"])
    [got] = [r for r in receiver.snapshot() if json.loads(r.body)["id"] == event.id]
    checks = [{"name": "webhook", "body": got.body.decode(), "headers": got.headers, "secret": secret}]
    result = run_node_checks(f"{server.url}/v1", server.api_key, checks)["webhook"]
    assert result["event"] == json.loads(got.body)
    assert result["tampered"] == "InvalidWebhookSignatureError"


@pytest.mark.e2e
def test_a_receiver_that_is_down_gets_its_event_later_even_across_a_server_restart(
    client: OpenAI, receiver: WebhookReceiver, secret: str, server: RunningServer, models_dir: Path
) -> None:
    """Last in the module: it stops and restarts the server."""
    port = int(receiver.url.split(":")[2].split("/")[0])
    receiver.stop()  # the receiver is down: connections are refused
    job_id = _create(client, _upload(client, jsonl_bytes(valid_examples(12))), {"n_epochs": 1})
    client.fine_tuning.jobs.cancel(job_id)

    def failing_tries() -> list[Any]:
        deliveries = [d for d in openft(server.data_dir, "list", "--deliveries") if d["job_id"] == job_id]
        return deliveries if deliveries and deliveries[0]["attempt_count"] >= 2 else []

    [pending] = wait_for(failing_tries, timeout=60, what="two failed tries")
    assert pending["status"] == "pending" and pending["next_attempt_at"]
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in pending["attempts"])

    server.stop()  # undelivered: the event waits in the outbox
    back = WebhookReceiver().start(port=port)
    restarted = start_server(
        server.data_dir, models_dir, extra_env=FAST_RETRIES, port=int(server.url.rsplit(":", 1)[1])
    )
    try:
        [event] = wait_for_events(client, back, job_id, secret, ["fine_tuning.job.cancelled"])
        assert event.id == pending["event_id"]
        [done] = [d for d in openft(server.data_dir, "list", "--deliveries") if d["job_id"] == job_id]
        assert done["status"] == "delivered" and done["attempts"][-1]["status_code"] == 200
        assert done["attempt_count"] >= len(done["attempts"]) > len(pending["attempts"])
    finally:
        restarted.stop()
        back.stop()
