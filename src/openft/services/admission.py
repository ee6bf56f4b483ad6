"""Waiting for a client's request while watching that the client is still there.

Requests wait for room in their model's batch as futures on the event loop (no thread each; see
`openft.services.inference`); a client that leaves while its request waits or runs is noticed here
(polled every `DISCONNECT_POLL_SECONDS`), and its request leaves the line or stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

Disconnected = Callable[[], Awaitable[bool]]
"""Asks whether the client that sent a request has gone (the API passes `routes.chat._ClientWatch.disconnected`)."""

DISCONNECT_POLL_SECONDS = 0.25
"""How often a waiting or running request checks that its client is still there."""


class ClientDisconnected(Exception):
    """The client went away while its request waited or ran; the work was dropped or stopped."""


async def unless_disconnected(work: Awaitable[T], disconnected: Disconnected | None) -> T:
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
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientDisconnected


async def watch(disconnected: Disconnected, then: Callable[[], object] | None = None) -> None:
    """Return (after calling `then`) once the client has gone; cancel the task to stop watching."""
    while not await disconnected():
        await asyncio.sleep(DISCONNECT_POLL_SECONDS)
    if then is not None:
        then()
