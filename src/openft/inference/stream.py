"""`GenerationStream`: one request's deltas, produced by a batch scheduler's thread and read from any thread.

The HTTP layer reads a stream from a thread pool or an event loop, and a client that disconnects leaves
the stream closed or simply dropped. So generation never runs inside `next()`: a producer (the base's
batch scheduler, `openft.inference.scheduler`, or the vLLM bridge) holds the stream's `StreamChannel` and
puts deltas on it; the reader only takes them off.

A request goes through two moments the reader can wait for: `started` (it was admitted into a running
batch: its prompt was accepted and its first forward pass is under way, or it failed before that and
`started` raises the error, which the API still answers as a plain 4xx/5xx) and `finished` (generation
stopped and every resource it held was given back).

The queue is unbounded on purpose: a slow reader then never keeps the batch (and every other request in
it) waiting; it cannot grow past the request's own `n × max_tokens` deltas. `close()` or `cancel()` (or
dropping the stream) sets a flag that the producer checks before every step, so the request leaves its
batch (or its line) within one forward pass.

An event loop reads the same stream with `async for`: the producer wakes the loop when it puts a delta,
so a waiting reader holds no thread at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from openft.inference.decoding import collect
from openft.inference.types import GenerationParams, GenerationResult, StreamDelta


class GenerationCancelled(Exception):
    """The request was cancelled (its reader left) before it was admitted into a batch."""


@dataclass(frozen=True)
class StreamEnd:
    """How a generation ended: tokens generated, whether it was asked to stop early, and its failure."""

    completion_tokens: int
    cancelled: bool = False
    error: BaseException | None = None


class StreamChannel:
    """The producer's half of a stream: it holds no reference to the `GenerationStream`, so a reader that
    drops its stream is collected and that cancels the request (see `GenerationStream.__init__`)."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue[tuple[StreamDelta, int] | StreamEnd] = queue.SimpleQueue()
        self.wake: Callable[[], None] | None = None
        self.started: Future[None] = Future()
        self.finished: Future[StreamEnd] = Future()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._on_cancel: Callable[[], None] | None = None

    # producer side --------------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """The reader asked to stop: leave the batch (or the line) before the next step."""
        return self._cancel.is_set()

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the cancelling thread) when the reader cancels, e.g. to wake an idle producer."""
        with self._lock:
            self._on_cancel = callback
        if self._cancel.is_set():
            callback()

    def admit(self) -> None:
        """The request joined a batch: `started` resolves (idempotent)."""
        with contextlib.suppress(InvalidStateError):  # already resolved (or cancelled by a waiter)
            self.started.set_result(None)

    def put(self, delta: StreamDelta, completion_tokens: int) -> None:
        self._put((delta, completion_tokens))

    def end(self, completion_tokens: int, error: BaseException | None = None) -> StreamEnd:
        """The last call of a producer: the end marker, `started` (with the error if it never started) and
        `finished`, after the request gave back what it held."""
        end = StreamEnd(completion_tokens, self._cancel.is_set(), error)
        with contextlib.suppress(InvalidStateError):
            self.started.set_exception(error if error is not None else GenerationCancelled())
        self._put(end)
        with contextlib.suppress(InvalidStateError):
            self.finished.set_result(end)
        return end

    # reader side ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        with self._lock:
            callback = self._on_cancel
        if callback is not None:
            callback()

    def _put(self, item: tuple[StreamDelta, int] | StreamEnd) -> None:
        self.items.put(item)
        wake = self.wake
        if wake is not None:
            wake()


class GenerationStream(Iterator[StreamDelta]):
    """Iterator (and async iterator) of `StreamDelta`s; `prompt_tokens` is known at once,
    `completion_tokens` is final once the stream is exhausted. A failure during generation is raised by
    `next()` after the deltas produced before it. Use as a context manager, or call `close()` (or
    `cancel()`, which does not wait), to stop early. Read it from one thread or one event loop."""

    def __init__(self, channel: StreamChannel, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self._channel = channel
        self._completion_tokens = 0
        self._finished = False
        self._ready: asyncio.Event | None = None
        # The producer holds only the channel, so a dropped stream is collected and cancels its request.
        self._finalizer = weakref.finalize(self, channel.cancel)

    @property
    def completion_tokens(self) -> int:
        """Tokens generated so far over all choices (final once the stream is exhausted)."""
        return self._completion_tokens

    @property
    def started(self) -> Future[None]:
        """Done once the request is in a batch; raises its error if it failed (or was cancelled) before."""
        return self._channel.started

    @property
    def finished(self) -> Future[StreamEnd]:
        """Done once generation has stopped (finished, failed or cancelled) and its resources are released.

        A callback on it must not hold the stream: a dropped stream is what cancels an abandoned generation.
        """
        return self._channel.finished

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> StreamDelta:
        if self._finished:
            raise StopIteration
        delta = self._take(self._channel.items.get())
        if delta is None:
            raise StopIteration
        return delta

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> StreamDelta:
        """`next()` for an event loop: waits without holding a thread."""
        if self._finished:
            raise StopAsyncIteration
        if self._ready is None:
            loop, ready = asyncio.get_running_loop(), asyncio.Event()
            self._ready = ready  # the wake-up holds the event and the loop, never the stream (see __init__)
            self._channel.wake = lambda: call_soon(loop, ready.set)
        while True:
            self._ready.clear()
            try:
                item = self._channel.items.get_nowait()
            except queue.Empty:
                await self._ready.wait()  # set by the producer's next put
                continue
            delta = self._take(item)
            if delta is None:
                raise StopAsyncIteration
            return delta

    def _take(self, item: tuple[StreamDelta, int] | StreamEnd) -> StreamDelta | None:
        """The delta of a queue item; None at the end (raising the generation's error, if any)."""
        if isinstance(item, StreamEnd):
            self._finished = True
            self._completion_tokens = item.completion_tokens
            if item.error is not None:
                raise item.error
            return None
        delta, self._completion_tokens = item
        return delta

    def cancel(self) -> None:
        """Ask the generation to stop before its next step, without waiting (see `finished`); a no-op once
        the reader has seen its end."""
        if not self._finished:
            self._channel.cancel()

    def close(self) -> None:
        """Stop generating and wait (one forward pass at most) until its resources are released."""
        self.cancel()
        self._channel.finished.result()
        self._finished = True

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def read_all(stream: GenerationStream, params: GenerationParams) -> GenerationResult:
    """A whole stream, read on this thread, as one result (a non-streamed reply is its stream's deltas put
    together, so the two agree by construction)."""
    with stream:
        choices = collect(stream, params.n, params.logprobs)
    return GenerationResult(
        choices=choices, prompt_tokens=stream.prompt_tokens, completion_tokens=stream.completion_tokens
    )


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: Any) -> None:
    """`loop.call_soon_threadsafe`, a no-op once the loop is closed (nobody is waiting on it any more)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)
