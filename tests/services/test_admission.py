"""The per-model line in front of inference: first come first served, bounded, and left by cancelled waiters."""

from __future__ import annotations

import asyncio

import pytest

from openft.errors import RateLimited
from openft.services.admission import ClientDisconnected, ModelLines, Ticket, unless_disconnected


def test_one_turn_at_a_time_in_arrival_order_and_429_past_the_line() -> None:
    async def scenario() -> None:
        lines = ModelLines(max_queued=2)
        first = await lines.enter("m")
        order: list[str] = []

        async def wait(name: str) -> Ticket:
            ticket = await lines.enter("m")
            order.append(name)
            return ticket

        second, third = asyncio.ensure_future(wait("second")), asyncio.ensure_future(wait("third"))
        await asyncio.sleep(0)
        assert lines.waiting("m") == 2
        with pytest.raises(RateLimited) as refused:
            await lines.enter("m")
        assert refused.value.code == "rate_limit_exceeded" and refused.value.retry_after >= 1
        other = await lines.enter("another model")  # lines are per model
        other.release()
        first.release()
        (await second).release()
        (await third).release()
        assert order == ["second", "third"] and lines.waiting("m") == 0
        (await lines.enter("m")).release()  # free again: no wait

    asyncio.run(scenario())


def test_a_waiter_whose_client_left_leaves_the_line_without_a_turn() -> None:
    async def scenario() -> None:
        lines = ModelLines(max_queued=1)
        running = await lines.enter("m")
        gone = asyncio.Event()

        async def disconnected() -> bool:
            return gone.is_set()

        waiter = asyncio.ensure_future(unless_disconnected(lines.enter("m"), disconnected))
        for _ in range(5):  # let the waiter (and the task it starts) reach the line
            await asyncio.sleep(0)
        assert lines.waiting("m") == 1
        gone.set()
        with pytest.raises(ClientDisconnected):
            await waiter
        assert lines.waiting("m") == 0
        (await asyncio.wait_for(_next_turn_after(running, lines), timeout=5)).release()

    asyncio.run(scenario())


async def _next_turn_after(running: Ticket, lines: ModelLines) -> Ticket:
    """The next request gets the model at once when the running one ends: nobody is left in front of it."""
    following = asyncio.ensure_future(lines.enter("m"))
    await asyncio.sleep(0)
    running.release()
    return await following


def test_a_cancelled_waiter_never_blocks_the_line() -> None:
    async def scenario() -> None:
        lines = ModelLines(max_queued=4)
        running = await lines.enter("m")
        cancelled = asyncio.ensure_future(lines.enter("m"))
        behind = asyncio.ensure_future(lines.enter("m"))
        await asyncio.sleep(0)
        cancelled.cancel()
        running.release()
        (await asyncio.wait_for(behind, timeout=5)).release()
        assert cancelled.cancelled()

    asyncio.run(scenario())
