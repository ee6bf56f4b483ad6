"""Admission control for inference: one request at a time per model, and a bounded line behind it.

Requests on one base model run one at a time anyway: they share its weights and its active adapter (see
`openft.inference.registry`). They used to wait for it on the base's lock, each inside a thread of the
HTTP server's pool, with no bound: 30 requests on one model stalled every route, `/health` included,
for 14 s. Here they wait as futures on the event loop (no thread each), in a first-come first-served
line of at most `max_queued` per model; past that a request is refused at once with 429
`rate_limit_exceeded` and a `Retry-After` estimate. A request cancelled while it waits (its client
left) leaves the line without ever running.

Everything here runs on the event loop's thread, except `Ticket.release_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable

from openft.errors import RateLimited

Disconnected = Callable[[], Awaitable[bool]]
"""Asks whether the client that sent a request has gone (the API passes `routes.chat._ClientWatch.disconnected`)."""

DISCONNECT_POLL_SECONDS = 0.25
"""How often a waiting or running request checks that its client is still there."""
MAX_RETRY_AFTER_SECONDS = 60
"""The SDKs honour a `Retry-After` up to a minute; a longer estimate is no more useful to them."""
_SMOOTHING = 0.2
"""Weight of the newest turn in the running mean of how long a turn lasts."""


class ClientDisconnected(Exception):
    """The client went away while its request waited or ran; the work was dropped or stopped."""


class _Line:
    def __init__(self) -> None:
        self.busy = False
        self.waiting: deque[asyncio.Future[None]] = deque()


class Ticket:
    """A request's turn on one model; `release()` it (once the base is free again) to let the next go."""

    def __init__(self, lines: ModelLines, key: Hashable, line: _Line):
        self._lines, self._key, self._line = lines, key, line
        self._started = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._released = False

    def release(self) -> None:
        """Hand the model to the next request in line (idempotent; on the event loop's thread)."""
        if not self._released:
            self._released = True
            self._lines._next(self._key, self._line, time.monotonic() - self._started)

    def release_threadsafe(self) -> None:
        """`release()` from any thread (e.g. the model's, when its generation ends)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            self._loop.call_soon_threadsafe(self.release)


class ModelLines:
    """One line per model key; see the module docstring."""

    def __init__(self, max_queued: int):
        if max_queued < 0:
            raise ValueError("max_queued must not be negative")
        self._max_queued = max_queued
        self._lines: dict[Hashable, _Line] = {}
        self._turn_seconds: dict[Hashable, float] = {}  # running mean of a turn's length, per model

    def waiting(self, key: Hashable) -> int:
        """Requests waiting for the model (not counting the one running)."""
        line = self._lines.get(key)
        return len(line.waiting) if line else 0

    async def enter(self, key: Hashable, *, bounded: bool = True) -> Ticket:
        """Wait for the model's turn. Raises RateLimited when `bounded` and the line is full.

        `bounded=False` is for a request already admitted that needs another turn (a legacy completion's
        next prompt): it is never refused halfway.
        """
        line = self._lines.setdefault(key, _Line())
        if not line.busy:
            line.busy = True
            return Ticket(self, key, line)
        if bounded and len(line.waiting) >= self._max_queued:
            raise RateLimited(
                f"Too many requests are waiting for this model (at most {self._max_queued}); retry later.",
                retry_after=self._retry_after(key),
            )
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        line.waiting.append(turn)
        try:
            await turn
        except BaseException:
            if turn.done() and not turn.cancelled():  # given the turn just as it was cancelled: pass it on
                self._next(key, line, None)
            elif turn in line.waiting:
                line.waiting.remove(turn)
            raise
        return Ticket(self, key, line)

    def _next(self, key: Hashable, line: _Line, seconds: float | None) -> None:
        if seconds is not None:
            mean = self._turn_seconds.get(key)
            self._turn_seconds[key] = seconds if mean is None else (1 - _SMOOTHING) * mean + _SMOOTHING * seconds
        while line.waiting:
            turn = line.waiting.popleft()
            if not turn.done():  # a cancelled waiter's future is done already
                turn.set_result(None)
                return
        line.busy = False
        if self._lines.get(key) is line:
            del self._lines[key]

    def _retry_after(self, key: Hashable) -> float:
        """About when a place in the line frees up: when the running request is likely done."""
        return min(MAX_RETRY_AFTER_SECONDS, max(1.0, self._turn_seconds.get(key, 1.0)))


async def unless_disconnected(work: Awaitable[Ticket], disconnected: Disconnected | None) -> Ticket:
    """Await `work`, but give up (cancelling it) with ClientDisconnected if the client leaves meanwhile."""
    task = asyncio.ensure_future(work)
    if disconnected is None:
        return await task
    watcher = asyncio.ensure_future(watch(disconnected))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if task.done() and not task.cancelled() and task.exception() is None:
        task.result().release()  # it got its turn while being cancelled
    raise ClientDisconnected


async def watch(disconnected: Disconnected, then: Callable[[], object] | None = None) -> None:
    """Return (after calling `then`) once the client has gone; cancel the task to stop watching."""
    while not await disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    if then is not None:
        then()
