"""Webhooks on SQLite and PostgreSQL: the outbox row is written with the status change (and only then), one per
transition and endpoint; the deliverer signs so the official SDK verifies, retries until a 2xx, gives up after
the last delay, and a try whose lease ran out cannot record over a newer one."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from openai import OpenAI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from openft.db import repositories as repo
from openft.db import webhooks as outbox
from openft.db.engine import make_engine, make_session_factory
from openft.db.migrate import upgrade
from openft.db.tables import JobRow, WebhookAttemptRow, WebhookDeliveryRow
from openft.domain.job_states import JobStatus
from openft.errors import InvalidRequest, NotFound
from openft.services.webhook_delivery import WebhookDeliverer
from openft.services.webhooks import WebhookService, signed_headers
from tests.support.rows import job_row
from tests.support.webhook_receiver import WebhookReceiver

S = JobStatus


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def service(sessions: sessionmaker[Session]) -> WebhookService:
    return WebhookService(sessions)


def _org_id(sessions: sessionmaker[Session], name: str) -> str:
    with sessions.begin() as session:
        row = repo.get_organization_by_name(session, name)
        assert row is not None
        return row.id


def _job(sessions: sessionmaker[Session], org_id: str, status: JobStatus) -> str:
    row = job_row(org_id, status)
    with sessions.begin() as session:
        session.add(row)
    return row.id


def _move(sessions: sessionmaker[Session], job_id: str, *targets: JobStatus) -> None:
    for target in targets:
        with sessions.begin() as session:
            assert repo.transition_job(session, job_id, target)


def _deliveries(sessions: sessionmaker[Session]) -> list[WebhookDeliveryRow]:
    with sessions.begin() as session:
        return list(session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.seq)))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_each_transition_queues_one_event_per_endpoint_that_wants_it(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    everything = service.add("http://127.0.0.1:1/all", org="acme")
    only_succeeded = service.add("https://hooks.example/ok", org="acme", event_types=["fine_tuning.job.succeeded"])
    service.add("http://127.0.0.1:1/other", org="other")  # another organization's: never gets acme's events
    acme = _org_id(sessions, "acme")

    paused_twice = _job(sessions, acme, S.RUNNING)
    _move(sessions, paused_twice, S.PAUSING, S.PAUSED, S.QUEUED, S.RUNNING, S.PAUSING, S.PAUSED, S.CANCELLED)
    failed = _job(sessions, acme, S.VALIDATING_FILES)
    _move(sessions, failed, S.FAILED)
    succeeded = _job(sessions, acme, S.RUNNING)
    _move(sessions, succeeded, S.SUCCEEDED)
    # a transition whose transaction rolls back leaves no event behind
    rolled_back = _job(sessions, acme, S.QUEUED)
    with pytest.raises(RuntimeError), sessions.begin() as session:
        assert repo.transition_job(session, rolled_back, S.CANCELLED)
        raise RuntimeError("the use-case fails after the status write")
    # a refused compare-and-set (the job is no longer in a source status) queues nothing either
    with sessions.begin() as session:
        assert not repo.transition_job(session, succeeded, S.CANCELLED, sources=[S.QUEUED])

    rows = _deliveries(sessions)
    sent = [(row.endpoint_id, row.job_id, row.event_type) for row in rows]
    assert sent == [
        (everything.info.id, paused_twice, "fine_tuning.job.paused"),
        (everything.info.id, paused_twice, "fine_tuning.job.paused"),
        (everything.info.id, paused_twice, "fine_tuning.job.cancelled"),
        (everything.info.id, failed, "fine_tuning.job.failed"),
        (everything.info.id, succeeded, "fine_tuning.job.succeeded"),
        (only_succeeded.info.id, succeeded, "fine_tuning.job.succeeded"),
    ]
    assert len({row.event_id for row in rows}) == 5, "one event per transition, shared by its endpoints"
    body = json.loads(rows[-1].body)
    assert body == {
        "id": rows[-1].event_id,
        "object": "event",
        "created_at": body["created_at"],
        "type": "fine_tuning.job.succeeded",
        "data": {"id": succeeded},
    }
    assert rows[-1].body == rows[-2].body and all(row.status == "pending" for row in rows)


def test_recovery_of_a_dead_workers_pausing_job_sends_paused(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    endpoint = service.add("http://127.0.0.1:1/hook", org="acme")
    job_id = _job(sessions, _org_id(sessions, "acme"), S.PAUSING)
    with sessions.begin() as session:
        job = session.scalars(select(JobRow).where(JobRow.id == job_id)).one()
        assert repo.release_expired_claim(session, job, S.PAUSED, now=time.time())
    assert [(row.endpoint_id, row.event_type) for row in _deliveries(sessions)] == [
        (endpoint.info.id, "fine_tuning.job.paused")
    ]


def test_the_sdk_verifies_what_is_signed_and_rejects_a_wrong_secret(service: WebhookService) -> None:
    created = service.add("http://127.0.0.1:1/hook", org="acme")
    body = outbox.event_body("evt_abc", "fine_tuning.job.cancelled", "ftjob-x", int(time.time()))
    headers = signed_headers(created.secret, "evt_abc", body)
    client = OpenAI(api_key="unused", base_url="http://127.0.0.1:1/v1")
    event = client.webhooks.unwrap(body, headers, secret=created.secret)
    assert (event.type, event.id, event.data.id) == ("fine_tuning.job.cancelled", "evt_abc", "ftjob-x")
    with pytest.raises(Exception, match="signature"):
        client.webhooks.unwrap(body, headers, secret=service.add("http://127.0.0.1:1/b", org="acme").secret)
    with pytest.raises(Exception, match="signature"):
        client.webhooks.unwrap(body.replace("ftjob-x", "ftjob-y"), headers, secret=created.secret)


def test_a_receiver_that_fails_first_gets_the_event_later_and_attempts_are_listed(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    answers = iter([500, 302, 204])
    receiver = WebhookReceiver(answer=lambda _received: next(answers)).start()
    try:
        created = service.add(receiver.url, org="acme")
        job_id = _job(sessions, _org_id(sessions, "acme"), S.QUEUED)
        _move(sessions, job_id, S.CANCELLED)
        deliverer = WebhookDeliverer(sessions, poll_seconds=0.1, timeout_seconds=5, retry_delays=[0, 0.3, 60])
        assert deliverer.run_once() == 1  # 500
        assert deliverer.run_once() == 1  # 302: redirects are never followed
        assert deliverer.run_once() == 0, "the third try waits for its delay"
        time.sleep(0.35)
        assert deliverer.run_once() == 1  # 204
        assert deliverer.run_once() == 0
        deliverer.stop()
    finally:
        receiver.stop()
    got = receiver.snapshot()
    assert len(got) == 3 and len({r.headers["webhook-id"] for r in got}) == 1, "retries carry the same event id"
    client = OpenAI(api_key="unused", base_url="http://127.0.0.1:1/v1")
    for received in got:
        event = client.webhooks.unwrap(received.body, received.headers, secret=created.secret)
        assert (event.type, event.data.id) == ("fine_tuning.job.cancelled", job_id)
    [delivery] = service.deliveries(org="acme")
    shown = delivery.to_json()
    assert shown["status"] == "delivered" and shown["attempt_count"] == 3 and shown["delivered_at"]
    assert [a["status_code"] for a in shown["attempts"]] == [500, 302, 204]
    assert shown["attempts"][1]["error"].startswith("redirect to")


def test_an_unreachable_receiver_fails_for_good_after_the_last_delay(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    service.add(f"http://127.0.0.1:{_closed_port()}/hook", org="acme")
    job_id = _job(sessions, _org_id(sessions, "acme"), S.RUNNING)
    _move(sessions, job_id, S.SUCCEEDED)
    deliverer = WebhookDeliverer(sessions, poll_seconds=0.1, timeout_seconds=2, retry_delays=[0])
    assert deliverer.run_once() == 1
    assert deliverer.run_once() == 1
    assert deliverer.run_once() == 0
    deliverer.stop()
    [delivery] = service.deliveries()
    shown = delivery.to_json()
    assert shown["status"] == "failed" and shown["next_attempt_at"] is None
    assert [a["status_code"] for a in shown["attempts"]] == [None, None]
    assert all("ConnectError" in a["error"] for a in shown["attempts"])


def test_a_claim_is_leased_and_a_late_try_cannot_record(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    service.add("http://127.0.0.1:1/hook", org="acme")
    job_id = _job(sessions, _org_id(sessions, "acme"), S.QUEUED)
    _move(sessions, job_id, S.CANCELLED)
    now = time.time()
    with sessions.begin() as session:
        [first] = outbox.claim_due(session, now=now, lease_seconds=40, limit=8)
    with sessions.begin() as session:
        assert outbox.claim_due(session, now=now + 1, lease_seconds=40, limit=8) == [], "leased to the first"
    with sessions.begin() as session:  # the first deliverer died: after its lease, another one tries
        [second] = outbox.claim_due(session, now=now + 41, lease_seconds=40, limit=8)
    assert (first.attempt, second.attempt) == (1, 2)
    outcome = {"duration_ms": 1, "status_code": 200, "error": None, "status": "delivered", "next_attempt_at": None}
    with sessions.begin() as session:
        assert not outbox.record_attempt(session, first, attempted_at=now, **outcome)  # type: ignore[arg-type]
        assert outbox.record_attempt(session, second, attempted_at=now, **outcome)  # type: ignore[arg-type]
    [delivery] = service.deliveries()
    assert delivery.row.status == "delivered" and len(delivery.attempts) == 1


def test_endpoints_are_checked_listed_without_secrets_and_deleted_with_their_deliveries(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    for bad in ("ftp://host/x", "file:///etc/passwd", "http:///nohost", "not a url"):
        with pytest.raises(InvalidRequest):
            service.add(bad, org="acme")
    with pytest.raises(InvalidRequest, match="Unknown event type"):
        service.add("http://127.0.0.1:1/x", org="acme", event_types=["fine_tuning.job.created"])
    created = service.add("http://127.0.0.1:1/x", org="acme")
    assert created.secret.startswith("whsec_")
    listed = [endpoint.to_json() for endpoint in service.endpoints(org="acme")]
    assert listed == [created.info.to_json()] and "secret" not in listed[0]
    assert service.endpoints(org="nobody") == []
    job_id = _job(sessions, _org_id(sessions, "acme"), S.QUEUED)
    _move(sessions, job_id, S.CANCELLED)
    assert len(service.deliveries()) == 1
    service.delete(created.info.id)
    assert service.endpoints() == [] and service.deliveries() == []
    with pytest.raises(NotFound):
        service.delete(created.info.id)


def test_finished_deliveries_are_forgotten_after_the_retention_but_pending_ones_stay(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    service.add(f"http://127.0.0.1:{_closed_port()}/hook", org="acme")
    acme = _org_id(sessions, "acme")
    for _ in range(3):
        _move(sessions, _job(sessions, acme, S.QUEUED), S.CANCELLED)
    deliverer = WebhookDeliverer(sessions, poll_seconds=0.1, timeout_seconds=2, retry_delays=[], retention_seconds=60)
    assert deliverer.run_once() == 3  # no retries: all three fail for good, each with its one attempt
    with sessions.begin() as session:
        rows = list(session.scalars(select(WebhookDeliveryRow).order_by(WebhookDeliveryRow.seq)))
        rows[0].created_at -= 120  # an old failed one
        rows[1].created_at -= 120
        rows[1].status = "pending"  # an old one still owed
        kept_ids = [rows[1].id, rows[2].id]
    assert deliverer.prune() == 1
    assert sorted(d.row.id for d in service.deliveries()) == sorted(kept_ids)
    with sessions.begin() as session:
        assert session.scalar(select(func.count()).select_from(WebhookAttemptRow)) == 2
    deliverer.stop()


def test_several_deliverers_on_one_database_send_each_event_once(
    sessions: sessionmaker[Session], service: WebhookService
) -> None:
    """Several servers on one database: the claim (SKIP LOCKED on PostgreSQL, the write lock on SQLite) gives each
    due delivery to one deliverer only."""
    receiver = WebhookReceiver().start()
    try:
        service.add(receiver.url, org="acme")
        acme = _org_id(sessions, "acme")
        for _ in range(20):
            _move(sessions, _job(sessions, acme, S.QUEUED), S.CANCELLED)
        deliverers = [
            WebhookDeliverer(sessions, poll_seconds=0.05, timeout_seconds=5, retry_delays=[60]) for _ in range(3)
        ]
        for deliverer in deliverers:
            deliverer.start()
        deadline = time.monotonic() + 30
        while len(receiver.snapshot()) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # a second try of any event would land by now
        for deliverer in deliverers:
            deliverer.stop()
    finally:
        receiver.stop()
    ids_sent = [r.headers["webhook-id"] for r in receiver.snapshot()]
    assert len(ids_sent) == 20 and len(set(ids_sent)) == 20
    assert all(d.row.status == "delivered" and d.row.attempts == 1 for d in service.deliveries())
