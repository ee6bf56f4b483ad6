"""The deliverer: a thread of the API server that POSTs due webhook events from the outbox (db/webhooks.py).

Durability comes from the outbox, not from this thread: every event is a row written with the job's status
change, and a row leaves `pending` only when a try got a 2xx answer (`delivered`) or the retries ran out
(`failed`). A server stopped or killed mid-try leaves the row claimed until its lease (the timeout and a
margin) runs out; the next deliverer — this server restarted, or another server on the same PostgreSQL —
tries it again. So delivery is at least once: receivers tell repeats apart by `webhook-id` (the event id).

Retries: a try that gets no 2xx answer (an error status, a redirect — never followed —, a timeout, a refused
connection) is tried again after the next delay of `OPENFT_WEBHOOK_RETRY_SECONDS` (5 s, 30 s, 2 min, 10 min,
30 min, 1 h, 2 h, 4 h, 8 h, 8 h by default: 11 tries over about 24 hours), then the delivery is `failed`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
from sqlalchemy.orm import Session, sessionmaker

from openft.db import webhooks as outbox
from openft.db.engine import read_only_sessions
from openft.errors import InvalidRequest
from openft.services.webhooks import signed_headers

log = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 30.0
"""A claimed try's lease is the request timeout plus this: a live deliverer always records before it ends."""
BATCH = 8
"""Deliveries claimed (and POSTed concurrently) at once."""
MAX_ERROR_CHARS = 500
PRUNE_EVERY_SECONDS = 3600.0


def parse_retry_delays(text: str) -> list[float]:
    """`OPENFT_WEBHOOK_RETRY_SECONDS`: comma-separated delays in seconds, one per retry."""
    try:
        delays = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        delays = [-1.0]
    if any(delay < 0 for delay in delays):
        raise InvalidRequest(f"webhook retry delays must be seconds >= 0, comma-separated, not {text!r}.")
    return delays


class WebhookDeliverer:
    """Claims due deliveries, POSTs them signed, and records each try; runs on its own thread until `stop`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        poll_seconds: float,
        timeout_seconds: float,
        retry_delays: Sequence[float],
        retention_seconds: float | None = None,
    ):
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)  # the idle poll never takes SQLite's write lock
        self._poll = poll_seconds
        self._timeout = timeout_seconds
        self._delays = list(retry_delays)
        self._retention = retention_seconds
        self._pruned_at: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=timeout_seconds, follow_redirects=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-deliverer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the tries in flight (each is bounded by the timeout); what is left stays in the outbox."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._timeout + 5)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._pruned_at is None or time.monotonic() - self._pruned_at > PRUNE_EVERY_SECONDS:
                    self._pruned_at = time.monotonic()
                    self.prune()
                tried = self.run_once()
            except Exception:  # a database hiccup: the rows wait in the outbox, try again at the next poll
                log.exception("webhook delivery round failed")
                tried = 0
            if not tried:
                self._stop.wait(self._poll)

    def prune(self) -> int:
        """Forget finished deliveries older than the retention (`OPENFT_WEBHOOK_RETENTION_DAYS`), so the outbox
        does not grow for ever; returns how many went."""
        if self._retention is None:
            return 0
        with self._sessions.begin() as session:
            pruned = outbox.prune_finished(session, before=int(time.time() - self._retention))
        if pruned:
            log.info("forgot %d finished webhook deliveries older than the retention", pruned)
        return pruned

    def run_once(self) -> int:
        """One round: claim the due deliveries (a read first, the write lock only when there are some), POST
        them concurrently, record each outcome. Returns how many were tried."""
        now = time.time()
        with self._reads.begin() as session:
            if not outbox.has_due(session, now):
                return 0
        with self._sessions.begin() as session:
            claims = outbox.claim_due(session, now=now, lease_seconds=self._timeout + LEASE_MARGIN_SECONDS, limit=BATCH)
        if not claims:
            return 0
        with ThreadPoolExecutor(max_workers=len(claims), thread_name_prefix="webhook-post") as pool:
            list(pool.map(self._deliver, claims))
        return len(claims)

    def _deliver(self, claim: outbox.ClaimedDelivery) -> None:
        started = time.time()
        status_code, error = self._post(claim)
        delivered = status_code is not None and 200 <= status_code < 300
        if delivered:
            status, next_at = outbox.DELIVERED, None
        elif claim.attempt <= len(self._delays):
            status, next_at = outbox.PENDING, time.time() + self._delays[claim.attempt - 1]
        else:
            status, next_at = outbox.FAILED, None
        with self._sessions.begin() as session:
            recorded = outbox.record_attempt(
                session,
                claim,
                attempted_at=started,
                duration_ms=int((time.time() - started) * 1000),
                status_code=status_code,
                error=error,
                status=status,
                next_attempt_at=next_at,
            )
        if not recorded:
            log.warning("webhook delivery %s: try %d was taken over or removed; not recorded", claim.id, claim.attempt)
        elif status == outbox.FAILED:
            log.warning("webhook delivery %s to %s failed for good after %d tries", claim.id, claim.url, claim.attempt)

    def _post(self, claim: outbox.ClaimedDelivery) -> tuple[int | None, str | None]:
        """(status code, error): the code when the receiver answered, an error when it did not or not with 2xx."""
        headers = signed_headers(claim.secret, claim.event_id, claim.body)
        try:
            with self._client.stream("POST", claim.url, content=claim.body.encode(), headers=headers) as response:
                code = response.status_code
                if 200 <= code < 300:
                    return code, None
                if response.is_redirect:
                    return code, f"redirect to {response.headers.get('location', '?')} not followed"[:MAX_ERROR_CHARS]
                return code, f"HTTP {code}"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
