"""The Batch API's worker side: the input file's checks, the claim and its fencing (a worker that lost its
claim records nothing, a line is never recorded twice), and a batch past its 24 hours."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from openft.db import batches as batch_repo
from openft.db import repositories as repo
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import BatchRow
from openft.jobs.batches import BatchRunner, parse_input
from openft.protocol.batches import CreateBatchRequest
from openft.services.batches import BatchLineAnswerer, BatchService
from openft.services.container import Container
from openft.storage import LocalBlobStore
from tests.conftest import TINY_MODEL_NAME

CHAT = "/v1/chat/completions"


def _line(custom_id: Any, **changes: Any) -> str:
    body = {"model": TINY_MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **changes})


def test_the_input_file_is_checked_line_by_line() -> None:
    text = "\n".join(
        [
            _line("a"),
            "{not json",
            "",  # blank lines are skipped, and still counted
            _line("a"),
            _line("b", method="GET"),
            _line("c", url="/v1/completions"),
            _line("d", body=[1]),
            _line(None),
            _line("e", body={"messages": []}),
            _line("f"),
        ]
    )
    lines, errors = parse_input(text.encode(), CHAT)
    assert [(line.line, line.custom_id) for line in lines] == [(1, "a"), (10, "f")]
    assert [(e["line"], e["code"]) for e in errors] == [
        (2, "invalid_json_line"),
        (4, "duplicate_custom_id"),
        (5, "invalid_method"),
        (6, "invalid_url"),
        (7, "invalid_request"),
        (8, "missing_required_parameter"),
        (9, "missing_required_parameter"),
    ]
    assert parse_input(b"\n\n", CHAT)[1] == [
        {"code": "empty_file", "message": "The input file has no requests.", "param": None, "line": 1}
    ]


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


def _batch(sessions: sessionmaker[Session], **values: Any) -> str:
    now = int(time.time())
    row = BatchRow(
        id=f"batch_{time.monotonic_ns()}",
        organization_id="org-1",
        endpoint=CHAT,
        input_file_id="file-1",
        completion_window="24h",
        status="in_progress",
        total=2,
        created_at=now,
        expires_at=now + 86400,
        attempt=0,
        **values,
    )
    with sessions.begin() as session:
        session.add(row)
    return row.id


def test_a_worker_that_lost_its_claim_records_no_line_and_no_line_is_recorded_twice(
    sessions: sessionmaker[Session],
) -> None:
    batch_id = _batch(sessions)
    with sessions.begin() as session:
        first = batch_repo.claim_batch(session, worker_id="a", lease_seconds=0.2)
        assert first is not None and first.id == batch_id
        attempt_a = first.attempt
        assert batch_repo.claim_batch(session, worker_id="b", lease_seconds=5) is None  # held
    with sessions.begin() as session:
        assert batch_repo.record_line(session, batch_id, attempt_a, 1, True, {"custom_id": "x"})
    with sessions.begin() as session:
        assert not batch_repo.record_line(session, batch_id, attempt_a, 1, True, {"custom_id": "x"})
    time.sleep(0.3)  # a's lease runs out: b takes the batch over
    with sessions.begin() as session:
        second = batch_repo.claim_batch(session, worker_id="b", lease_seconds=5)
        assert second is not None and second.attempt == attempt_a + 1
    with sessions.begin() as session:
        assert batch_repo.renew_lease(session, batch_id, attempt_a, 5) is None
        assert not batch_repo.record_line(session, batch_id, attempt_a, 2, True, {"custom_id": "y"})
    with sessions.begin() as session:
        assert batch_repo.record_line(session, batch_id, attempt_a + 1, 2, False, {"custom_id": "y"})
        assert batch_repo.answered_lines(session, batch_id) == {1, 2}
        assert batch_repo.line_counts(session, [batch_id]) == {batch_id: (1, 1)}
        assert not batch_repo.set_fenced(session, batch_id, attempt_a, status="completed")


def _upload(container: Container, content: bytes) -> str:
    assert isinstance(container.store, LocalBlobStore)
    writer = container.store.writer()
    writer.write(content)
    return container.files.create(container.default_org_id, purpose="batch", filename="b.jsonl", writer=writer).id


def test_a_batch_past_its_24_hours_expires_with_its_lines_in_the_error_file(container: Container) -> None:
    assert container.batches is not None
    service = BatchService(container.sessions)
    file_id = _upload(container, "\n".join(_line(f"l{i}") for i in range(3)).encode())
    batch = service.create(
        container.default_org_id, CreateBatchRequest(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    )
    with container.sessions.begin() as session:
        row = batch_repo.get_batch(session, None, batch.id)
        assert row is not None
        row.expires_at = int(time.time())  # its window is over before a worker gets to it
    runner = BatchRunner(
        container.sessions,
        container.files,
        lambda: BatchLineAnswerer(container.inference, container.models, container.responses),
        worker_id="w",
        lease_seconds=5,
        concurrency=2,
    )
    runner.turn()
    runner.stop(timeout=60)
    expired = service.retrieve(container.default_org_id, batch.id)
    assert expired.status == "expired" and expired.expired_at is not None and expired.output_file_id is None
    assert expired.request_counts.total == 3 and expired.request_counts.completed == 0
    assert expired.error_file_id is not None
    content = b"".join(container.files.content(container.default_org_id, expired.error_file_id).chunks)
    records = [json.loads(line) for line in content.decode().splitlines()]
    assert [(r["custom_id"], r["error"]["code"], r["response"]) for r in records] == [
        (f"l{i}", "batch_expired", None) for i in range(3)
    ]
    with container.sessions.begin() as session:
        assert repo.get_file(session, container.default_org_id, expired.error_file_id) is not None
