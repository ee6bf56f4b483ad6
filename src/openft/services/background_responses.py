"""Background responses (`background: true`): answered by a task of the server that accepted them, read with
`GET /responses/{id}`, stopped with `POST /responses/{id}/cancel`.

Why a task of the server and not the worker queue: a background response is one generation on the serving
engine, exactly what the request would have run in the foreground, only without a client waiting on the
connection. The server that accepted it runs it, and the database row says who vouches for it: a lease the
runner renews every `lease / 6` seconds. So a response is never stuck `in_progress` forever:

- a graceful stop fails its server's running responses at once (`server_error`, "create it again");
- a killed server stops renewing, and the first read after the lease ran out fails the response the same way;
- cancelling writes `cancelled` (only from `queued`/`in_progress`); the runner sees it at once on the same
  server, or within a heartbeat on another one, and stops the generation. Deleting a running response stops
  it likewise. Every write of the runner is fenced on the status it expects, so a cancelled response stays
  cancelled when its generation ends a moment later, and a late expiry never fails a finished one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio.to_thread
from sqlalchemy.orm import Session, sessionmaker

from openft.db import responses as db
from openft.errors import OpenFTError
from openft.services.admission import ClientDisconnected, Disconnected

log = logging.getLogger(__name__)

LEASE_SECONDS = 30
"""How long a background response's runner vouches for it without renewing (OPENFT_RESPONSE_LEASE_SECONDS)."""

STOPPED = "The server running this background response stopped before it finished; create it again."

Answer = Callable[[Disconnected], Awaitable[dict[str, Any]]]
"""Generates the response (stopping when the callable says so) and returns it as stored JSON."""


class Snapshot(Protocol):
    """The response as stored JSON in `status`, with `error` (code, message) when it failed."""

    def __call__(self, status: str, error: tuple[str, str] | None = None) -> dict[str, Any]: ...


class BackgroundResponses:
    """The background responses this server runs: one task each, a heartbeat each, a stop flag each."""

    def __init__(self, sessions: sessionmaker[Session], lease_seconds: int = LEASE_SECONDS):
        self._sessions = sessions
        self.lease_seconds = lease_seconds
        self._tasks: dict[str, tuple[str, Snapshot, asyncio.Task[None]]] = {}
        self._stop: dict[str, threading.Event] = {}  # set from request threads too

    def lease_until(self) -> int:
        return int(time.time()) + self.lease_seconds

    def start(self, org_id: str, response_id: str, answer: Answer, snapshot: Snapshot) -> None:
        """Run `answer` for a response already stored as `queued`; returns at once."""
        self._stop[response_id] = threading.Event()
        task = asyncio.create_task(self._run(org_id, response_id, answer, snapshot))
        self._tasks[response_id] = (org_id, snapshot, task)
        task.add_done_callback(lambda _: self._forget(response_id))

    def stop_local(self, response_id: str) -> None:
        """Stop the generation of a response this server runs (it was cancelled or deleted); no-op otherwise."""
        if (flag := self._stop.get(response_id)) is not None:
            flag.set()

    async def stop_all(self) -> None:
        """A graceful stop: every running response is stopped and failed with STOPPED, so no client polls one
        that nobody runs until its lease runs out."""
        running = list(self._tasks.items())
        for response_id, (_, _, task) in running:
            self.stop_local(response_id)
            task.cancel()
        for response_id, (org_id, snapshot, task) in running:
            await asyncio.gather(task, return_exceptions=True)
            await self._write(org_id, response_id, snapshot("failed", ("server_error", STOPPED)), only_from=db.OPEN)

    def _forget(self, response_id: str) -> None:
        self._tasks.pop(response_id, None)
        self._stop.pop(response_id, None)

    async def _write(
        self, org_id: str, response_id: str, response: dict[str, Any], *, only_from: tuple[str, ...]
    ) -> bool:
        lease = self.lease_until() if response["status"] in db.OPEN else None

        def write() -> bool:
            with self._sessions.begin() as session:
                return db.update_background(
                    session, org_id, response_id, response, only_from=only_from, lease_expires_at=lease
                )

        return await anyio.to_thread.run_sync(write)

    async def _run(self, org_id: str, response_id: str, answer: Answer, snapshot: Snapshot) -> None:
        stop = self._stop[response_id]

        async def stopped() -> bool:
            return stop.is_set()

        heartbeat = asyncio.create_task(self._heartbeat(response_id, stop))
        try:
            running = await self._write(org_id, response_id, snapshot("in_progress"), only_from=("queued",))
            if not running:  # cancelled or deleted before it started
                return
            try:
                final = await answer(stopped)
            except ClientDisconnected:  # stopped: the row already says cancelled, or is gone
                return
            except OpenFTError as exc:
                final = snapshot("failed", (exc.code or "server_error", exc.message))
            except Exception:
                log.exception("background response %s failed", response_id)
                final = snapshot("failed", ("server_error", "The response could not be generated."))
            await self._write(org_id, response_id, final, only_from=("in_progress",))
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, response_id: str, stop: threading.Event) -> None:
        """Renew the lease; stop the generation once the row says cancelled (or was deleted), wherever that was
        decided."""
        while not stop.is_set():
            await asyncio.sleep(self.lease_seconds / 6)
            status = await anyio.to_thread.run_sync(functools.partial(self._renew, response_id))
            if status not in db.OPEN:
                stop.set()

    def _renew(self, response_id: str) -> str | None:
        with self._sessions.begin() as session:
            return db.renew_lease(session, response_id, self.lease_until())
