"""Waiting for a request while watching its client: the work is given up as soon as the client leaves."""

from __future__ import annotations

import asyncio

import pytest

from openft.services.admission import ClientDisconnected, unless_disconnected


def test_work_that_finishes_first_is_returned() -> None:
    async def scenario() -> None:
        async def work() -> str:
            await asyncio.sleep(0.01)
            return "done"

        async def still_there() -> bool:
            return False

        assert await unless_disconnected(work(), still_there) == "done"
        assert await unless_disconnected(work(), None) == "done"

    asyncio.run(scenario())


def test_a_client_that_leaves_cancels_the_work() -> None:
    async def scenario() -> None:
        gone = asyncio.Event()
        cancelled = asyncio.Event()

        async def work() -> str:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return "never"

        async def disconnected() -> bool:
            return gone.is_set()

        waiter = asyncio.ensure_future(unless_disconnected(work(), disconnected))
        await asyncio.sleep(0.05)
        gone.set()
        with pytest.raises(ClientDisconnected):
            await asyncio.wait_for(waiter, timeout=5)
        assert cancelled.is_set()

    asyncio.run(scenario())
