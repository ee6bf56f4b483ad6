"""Small thread pools of their own for work that must neither block the event loop nor wait behind FastAPI's
sync handlers (which share anyio's default limiter of 40 threads): API key lookups and JSON parsing.

A pool here is an anyio `CapacityLimiter` over anyio's worker threads. A limiter belongs to the event loop
that first waits on it, and one process may run several loops over time (each test client starts its own),
so there is one limiter per name and per running loop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, anyio.CapacityLimiter]] = (
    weakref.WeakKeyDictionary()
)


def _limiter(name: str, threads: int) -> anyio.CapacityLimiter:
    by_name = _limiters.setdefault(asyncio.get_running_loop(), {})
    if name not in by_name:
        by_name[name] = anyio.CapacityLimiter(threads)
    return by_name[name]


async def run_in_pool(name: str, threads: int, function: Callable[..., T], *args: object) -> T:
    """`function(*args)` in a worker thread, at most `threads` of pool `name` at once."""
    return await anyio.to_thread.run_sync(function, *args, limiter=_limiter(name, threads))
