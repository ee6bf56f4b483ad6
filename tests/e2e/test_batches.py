"""The Batch API end to end through the official SDK: a batch answered by the server's worker, line by line
equal to the same request sent alone; validation errors; cancel; a worker killed mid-batch."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, NotFoundError, OpenAI

from tests.conftest import TINY_MODEL_NAME
from tests.e2e.conftest import make_client
from tests.support import openapi_schemas
from tests.support.server import RunningServer, start_server
from tests.support.waiting import wait_for
from tests.support.workers import start_worker

CHAT = "/v1/chat/completions"
FINAL = {"completed", "failed", "expired", "cancelled"}


def _line(custom_id: str, body: dict[str, Any], url: str = CHAT) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def _chat_body(i: int) -> dict[str, Any]:
    return {
        "model": TINY_MODEL_NAME,
        "messages": [{"role": "user", "content": f"Count to {i}:"}],
        "max_tokens": 4,
        "temperature": 0,
    }


def _upload(client: OpenAI, lines: list[Any]) -> str:
    data = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()
    return client.files.create(file=("batch.jsonl", data), purpose="batch").id


def _finished(client: OpenAI, batch_id: str, timeout: float = 300) -> Any:
    return wait_for(
        lambda: (b := client.batches.retrieve(batch_id)).status in FINAL and b,
        timeout=timeout,
        interval=0.3,
        what=f"batch {batch_id} to finish",
    )


def _raw(client: OpenAI, batch_id: str) -> Any:
    return client.batches.with_raw_response.retrieve(batch_id).http_response.json()


def _records(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]


def test_a_200_line_chat_batch_answers_each_line_as_the_same_request_alone(server: RunningServer) -> None:
    client = make_client(server, "openai")
    n = 200
    bodies = {f"req-{i}": _chat_body(i % 20) for i in range(n)}
    input_id = _upload(client, [_line(cid, body) for cid, body in bodies.items()])
    client.chat.completions.create(**_chat_body(0))  # the model loaded before either is timed
    started = time.monotonic()
    raw = client.batches.with_raw_response.create(
        input_file_id=input_id, endpoint=CHAT, completion_window="24h", metadata={"run": "e2e"}
    )
    openapi_schemas.validate(raw.http_response.json(), "Batch")
    batch = raw.parse()
    assert batch.status == "validating" and batch.metadata == {"run": "e2e"}
    done = _finished(client, batch.id)
    batch_seconds = time.monotonic() - started
    openapi_schemas.validate(_raw(client, batch.id), "Batch")
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (n, n, 0)
    assert done.error_file_id is None and done.output_file_id is not None
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    records = _records(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in records) == sorted(bodies)
    assert all(r["id"].startswith("batch_req_") and r["error"] is None for r in records)
    assert all(r["response"]["status_code"] == 200 for r in records)

    started = time.monotonic()
    alone = {cid: client.chat.completions.create(**body) for cid, body in bodies.items()}
    alone_seconds = time.monotonic() - started
    for record in records:
        body = record["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == alone[record["custom_id"]].choices[0].message.content
    print(
        f"\n{n} lines: batch {n / batch_seconds:.1f} lines/s ({batch_seconds:.1f} s, from create to completed), "
        f"one by one {n / alone_seconds:.1f} requests/s ({alone_seconds:.1f} s); "
        f"ratio {alone_seconds / batch_seconds:.2f}×; validating {done.in_progress_at - done.created_at} s, "
        f"in_progress {done.finalizing_at - done.in_progress_at} s, "
        f"finalizing {done.completed_at - done.finalizing_at} s"
    )

    listed = client.batches.with_raw_response.list(limit=1).http_response.json()
    openapi_schemas.validate(listed, "ListBatchesResponse")
    assert listed["data"][0]["id"] == batch.id  # newest first
    assert batch.id not in [b.id for b in client.batches.list(after=batch.id, limit=100).data]


def test_batch_requests_are_checked(server: RunningServer) -> None:
    client = make_client(server, "openai")
    good = _upload(client, [_line("a", _chat_body(1))])
    with pytest.raises(BadRequestError) as bad:
        client.batches.create(input_file_id=good, endpoint="/v1/embeddings", completion_window="24h")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(BadRequestError) as bad:
        client.batches.create(input_file_id=good, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    assert bad.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(BadRequestError) as bad:
        client.batches.create(
            input_file_id=good,
            endpoint=CHAT,
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        )
    assert bad.value.body["param"] == "output_expires_after"  # type: ignore[index]
    tuning = client.files.create(
        file=("t.jsonl", b'{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'),
        purpose="fine-tune",
    ).id
    with pytest.raises(BadRequestError):
        client.batches.create(input_file_id=tuning, endpoint=CHAT, completion_window="24h")
    with pytest.raises(NotFoundError):
        client.batches.retrieve("batch_nope")

    lines: list[Any] = [
        _line("a", _chat_body(1)),
        "not json",
        _line("a", _chat_body(2)),
        {**_line("b", _chat_body(3)), "method": "GET"},
        _line("c", _chat_body(4), url="/v1/completions"),
        _line("d", {**_chat_body(5), "model": "no-such-model"}),
    ]
    batch = client.batches.create(input_file_id=_upload(client, lines), endpoint=CHAT, completion_window="24h")
    failed = _finished(client, batch.id)
    assert failed.status == "failed" and failed.failed_at is not None and failed.output_file_id is None
    assert failed.errors is not None and failed.errors.data is not None
    assert [(e.line, e.code) for e in failed.errors.data] == [
        (2, "invalid_json_line"),
        (3, "duplicate_custom_id"),
        (4, "invalid_method"),
        (5, "invalid_url"),
    ]
    openapi_schemas.validate(_raw(client, failed.id), "Batch")
    unknown = client.batches.create(
        input_file_id=_upload(client, [_line("a", _chat_body(1)), _line("d", {**_chat_body(5), "model": "nope"})]),
        endpoint=CHAT,
        completion_window="24h",
    )
    failed = _finished(client, unknown.id)
    assert failed.status == "failed" and failed.errors is not None and failed.errors.data is not None
    assert [(e.line, e.code) for e in failed.errors.data] == [(2, "model_not_found")]


def test_a_cancelled_batch_keeps_what_was_answered(server: RunningServer) -> None:
    client = make_client(server, "azure")  # Azure's /openai/batches is the same router
    bodies = [_line(f"c-{i}", {**_chat_body(i), "max_tokens": 16}) for i in range(1000)]
    batch = client.batches.create(input_file_id=_upload(client, bodies), endpoint=CHAT, completion_window="24h")
    wait_for(
        lambda: (c := client.batches.retrieve(batch.id).request_counts) is not None and c.completed >= 5,
        timeout=120,
        interval=0.2,
        what="a few answered lines",
    )
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in {"cancelling", "cancelled"}
    done = _finished(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None and done.request_counts is not None
    answered = _records(client, done.output_file_id)
    skipped = _records(client, done.error_file_id)
    assert 5 <= len(answered) == done.request_counts.completed < 1000
    assert {r["custom_id"] for r in answered} | {r["custom_id"] for r in skipped} == {b["custom_id"] for b in bodies}
    assert all(r["error"]["code"] == "batch_cancelled" for r in skipped)


def test_a_worker_killed_mid_batch_loses_no_line_and_repeats_none(tmp_path: Path, models_dir: Path) -> None:
    data_dir = tmp_path / "data"
    env = {"OPENFT_LEASE_SECONDS": "3"}
    server = start_server(data_dir, models_dir, extra_env=env, extra_args=["--no-worker"])
    workers = []
    try:
        client = make_client(server, "openai")
        bodies = [_line(f"k-{i}", {**_chat_body(i % 20), "max_tokens": 12}) for i in range(200)]
        batch = client.batches.create(input_file_id=_upload(client, bodies), endpoint=CHAT, completion_window="24h")
        time.sleep(1.0)
        assert client.batches.retrieve(batch.id).status == "validating"  # no worker yet
        workers.append(start_worker(data_dir, models_dir, "w1", extra_env=env))
        wait_for(
            lambda: (c := client.batches.retrieve(batch.id).request_counts) is not None and c.completed >= 20,
            timeout=180,
            interval=0.2,
            what="20 answered lines",
        )
        workers[0].kill()
        killed_at = client.batches.retrieve(batch.id).request_counts
        assert killed_at is not None and killed_at.completed < 200
        workers.append(start_worker(data_dir, models_dir, "w2", extra_env=env))
        done = _finished(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 200
        records = _records(client, done.output_file_id)
        assert sorted(r["custom_id"] for r in records) == sorted(b["custom_id"] for b in bodies)  # each once
        print(f"\nkilled after {killed_at.completed} lines; the second worker answered the rest")
    finally:
        for worker in workers:
            worker.kill()
        server.stop()


def test_completions_and_responses_batches(server: RunningServer) -> None:
    client = make_client(server, "openai")
    prompt = {"model": TINY_MODEL_NAME, "prompt": "Once upon", "max_tokens": 3, "temperature": 0}
    response = {"model": TINY_MODEL_NAME, "input": "Hello", "max_output_tokens": 3, "temperature": 0}
    for url, body, kind in [("/v1/completions", prompt, "text_completion"), ("/v1/responses", response, "response")]:
        lines = [
            _line("x", body, url=url),
            _line("y", {**body, "n": 0} if kind == "text_completion" else body, url=url),
        ]
        batch = client.batches.create(input_file_id=_upload(client, lines), endpoint=url, completion_window="24h")  # type: ignore[arg-type]
        done = _finished(client, batch.id)
        assert done.status == "completed" and done.request_counts is not None, done
        answered = {r["custom_id"]: r for r in _records(client, done.output_file_id)}
        assert answered["x"]["response"]["body"]["object"] == kind
        if kind == "text_completion":  # a request the API refuses is a failed line in the error file, as alone
            failed = _records(client, done.error_file_id)
            assert [(r["custom_id"], r["response"]["status_code"]) for r in failed] == [("y", 400)]
            assert failed[0]["response"]["body"]["error"]["type"] == "invalid_request_error"
            assert (done.request_counts.completed, done.request_counts.failed) == (1, 1)
        else:
            assert answered["y"]["response"]["body"]["status"] == "incomplete"  # cut at max_output_tokens
            assert (done.request_counts.completed, done.request_counts.failed) == (2, 0)
